#![recursion_limit = "256"]
//! # Diffeo: normalizing flows on burn
//!
//! A density `p_x` defined by pushing a simple base density `p_u` through an invertible,
//! differentiable map `T = T_K ∘ … ∘ T_1` (Papamakarios et al. 2021):
//!
//! `log p_x(x) = log p_u(T⁻¹(x)) + log|det J_{T⁻¹}(x)|`.
//!
//! - [`event`]: event shapes (flat `[D]`, images `[C, H, W]`) and the [`Call`](event::Call) every
//!   pass receives (context, random source, train/eval mode, solver tolerances).
//! - [`bijections`]: the [`Bijection`](bijections::Bijection) contract (output and log|det J|
//!   together, both directions, batched, with a cost per direction and exact or estimated
//!   log-dets) and the registry of layers; [`Chain`](bijections::Chain) composes them, inverts
//!   them and factors features out (multi-scale).
//! - [`transformer`] and [`spline`]: elementwise transformers (affine, additive,
//!   rational-quadratic spline) usable in every conditioner.
//! - [`nn`]: conditioner networks (MLP, MADE) and the fused dense kernel.
//! - [`distributions`]: base densities.
//! - [`flow`]: [`Flow`](flow::Flow) with `log_prob`, `sample`, `sample_and_log_prob`;
//!   [`families`]: the paper's families as ready-made architectures, by name.
//! - [`train`]: the one training loop, with objectives as values: maximum likelihood
//!   ([`fit`](mod@fit)) and reverse KL ([`vi`]).
//! - [`data`]: tables, files, built-in data sets and the preprocessing of inputs; [`model`]: a
//!   flow with its metadata; [`io`]: versioned, checksummed, atomically written model files.
//! - [`pipeline`]: from files to models and back — what the command line and the Python package
//!   call; [`bench`]: the peer-benchmark timings.
//! - [`testing`]: the correctness harness for bijections and the self-check of trained flows.
//!
//! ```no_run
//! use diffeo::prelude::*;
//! let device = diffeo::cpu();
//! let flow = MafConfig::new(2).with_transforms(5).init(&device)?;
//! # Ok::<(), diffeo::FlowError>(())
//! ```

pub mod bench;
pub mod bijections;
pub mod custom_op;
pub mod data;
pub mod datasets;
pub mod dequantization;
pub mod distributions;
pub mod error;
pub mod event;
pub mod families;
pub mod fit;
pub mod flow;
pub mod flow_matching;
pub mod io;
pub mod model;
pub mod nn;
pub mod ode;
pub mod pipeline;
pub mod sbi;
pub mod spline;
pub mod tensor;
pub mod testing;
pub mod train;
pub mod transformer;
pub mod vi;

pub use burn;
pub use error::{FlowError, Result};

use burn::tensor::{Device, FloatDType};

/// The CPU device (burn's `flex` backend) in its default float type (f32 unless configured).
pub fn cpu() -> Device {
    Device::flex()
}

/// Whether `device` is the CPU (burn's `flex` backend, with or without autodiff).
pub fn on_cpu(device: &Device) -> bool {
    matches!(device.as_dispatch().clone().inner(), burn::backend::DispatchDevice::Flex(_))
}

/// The CPU device configured for f64. burn fixes a device's float type once, before its first
/// tensor: call this before any other tensor work in the process (a second call is harmless).
pub fn cpu_f64() -> Result<Device> {
    let mut device = Device::flex();
    match device.configure(FloatDType::F64) {
        Ok(()) => Ok(device),
        Err(_) if matches!(device.settings().float_dtype, FloatDType::F64) => Ok(device),
        Err(e) => Err(FlowError::Backend(format!("cannot switch the CPU device to f64: {e:?}"))),
    }
}

/// The CUDA device `index` (burn's `cuda` backend; feature `cuda`), in f32. Splines run as composed
/// tensor operations there (the fused spline kernel is CPU-only).
#[cfg(feature = "cuda")]
pub fn cuda(index: usize) -> Device {
    Device::cuda(index)
}

/// The device named `cpu`, `cpu-f64`, `cuda` or `cuda:N` (CUDA needs the `cuda` feature): how
/// front ends choose a device without naming tensor types.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(cpu()),
        "cpu-f64" => cpu_f64(),
        gpu if gpu == "cuda" || gpu.starts_with("cuda:") => {
            let index: usize = gpu
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse)
                .map_err(|_| FlowError::InvalidConfig(format!("bad CUDA device index in {gpu:?}")))?;
            #[cfg(feature = "cuda")]
            return Ok(cuda(index));
            #[cfg(not(feature = "cuda"))]
            Err(FlowError::InvalidConfig(format!(
                "device {gpu}: this build has no CUDA support (build with --features cuda); device index {index}"
            )))
        }
        other => Err(FlowError::InvalidConfig(format!("expected a device cpu, cuda or cuda:N, got {other:?}"))),
    }
}

/// Common imports.
pub mod prelude {
    pub use crate::bijections::{
        invert, Bijection, Call, Chain, ChainConfig, Cost, Directions, EventShape, LayerConfig, LayerSpec, LogDet, Mode, Oriented,
        Tolerance,
    };
    pub use crate::distributions::{BaseConfig, BaseKind};
    pub use crate::error::{Direction, FlowError};
    pub use crate::families::{iaf, maf, nice, nsf, nsf_coupling, realnvp, GlowConfig, MafConfig, RealNvpConfig, RealNvpImageConfig};
    pub use crate::fit::{fit, fit_monitored, Dataset, FitConfig, FitEvent, FitReport, Schedule};
    pub use crate::flow::{Flow, FlowConfig, Standardization};
    pub use crate::train::{train, Objective, TrainConfig};
    pub use crate::transformer::Transformer;
    pub use burn::module::Module;
    pub use burn::tensor::{Device, Tensor};
    pub use rand::rngs::StdRng;
    pub use rand::SeedableRng;
}
