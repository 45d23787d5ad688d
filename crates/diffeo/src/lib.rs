//! # Diffeo: normalizing flows on burn
//!
//! A density `p_x` defined by pushing a simple base density `p_u` through an invertible,
//! differentiable map `T = T_K ∘ … ∘ T_1` (Papamakarios et al. 2021):
//!
//! `log p_x(x) = log p_u(T⁻¹(x)) + log|det J_{T⁻¹}(x)|`.
//!
//! - [`bijections`]: the [`Bijection`](bijections::Bijection) trait (output and log|det J|
//!   together, both directions, batched, optional context) and the layers: elementwise maps,
//!   masked autoregressive (MAF/IAF), coupling (RealNVP/NICE), permutations, batch norm, planar,
//!   [`Chain`](bijections::Chain) and [`Invert`](bijections::Invert).
//! - [`transformer`]: elementwise transformers (affine, additive, rational-quadratic spline)
//!   usable in every conditioner; [`spline`] holds the spline itself.
//! - [`distributions`]: base densities.
//! - [`flow`]: [`Flow`](flow::Flow) with `log_prob`, `sample`, `sample_and_log_prob`, and the
//!   builders [`MafConfig`](flow::MafConfig) and [`RealNvpConfig`](flow::RealNvpConfig).
//! - [`fit`](mod@fit): maximum-likelihood training.
//! - [`io`]: versioned, checksummed, atomically written model files.
//! - [`testing`]: the correctness harness for bijections.
//!
//! ```no_run
//! use diffeo::prelude::*;
//! let device = diffeo::cpu();
//! let flow = MafConfig::new(2).with_transforms(5).init(&device);
//! ```

pub mod bijections;
pub mod datasets;
pub mod distributions;
pub mod error;
pub mod fit;
pub mod flow;
pub mod io;
pub mod nn;
pub mod spline;
pub mod tensor;
pub mod testing;
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

/// Common imports.
pub mod prelude {
    pub use crate::bijections::{Bijection, Chain, Cost, Directions, Invert, LayerConfig, NormMode};
    pub use crate::distributions::BaseConfig;
    pub use crate::error::{Direction, FlowError};
    pub use crate::fit::{fit, fit_monitored, Dataset, FitConfig, FitEvent, FitReport, Schedule};
    pub use crate::flow::{iaf, maf, nice, nsf, nsf_coupling, realnvp, Flow, FlowConfig, MafConfig, RealNvpConfig, Standardization};
    pub use crate::transformer::Transformer;
    pub use burn::module::Module;
    pub use burn::tensor::{Device, Tensor};
    pub use rand::rngs::StdRng;
    pub use rand::SeedableRng;
}
