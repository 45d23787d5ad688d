//! `diffeo bench`: the peer harness's fixed configurations (`../shared/peers/bench.py`), timed the
//! same way by the library ([`diffeo::bench`]) and printed as one JSON line with the same keys, so
//! the outputs can be joined.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use diffeo::bench::BenchConfig;

use crate::commands::lib;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `MODEL-DATA`: model `maf` or `nsf` (autoregressive, 8 bins, tail bound 5), data a folder of
    /// DIR holding {train,val,test}.npy (e.g. `maf-moons`, `nsf-gauss16`, `maf-digits`, `nsf-power`).
    #[arg(long)]
    pub config: String,
    /// Folder written by the peers' make_data.py (`<data>/{train,val,test}.npy`, `meta.json`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Training steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..), default_value = "2000")]
    pub steps: u64,
    /// Batch size (default: 512 for 2-D data, 256 otherwise, as the peer figures were taken).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Seed.
    #[arg(long, default_value = "0")]
    pub seed: u64,
    /// Samples drawn for the sampling rate.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), default_value = "10000")]
    pub n_sample: u64,
    /// Device: `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// cnf: training gradients by backpropagation through the solver or by the adjoint method.
    #[arg(long, value_enum, default_value = "backprop")]
    pub gradient: crate::GradientArg,
    /// Also append the JSON line to this file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let config = BenchConfig {
        config: a.config,
        data_dir: a.data_dir,
        steps: a.steps as usize,
        batch: a.batch.map(|b| b as usize),
        threads: a.threads.map(|t| t as usize),
        seed: a.seed,
        n_sample: a.n_sample as usize,
        device: a.device,
        gradient: match a.gradient {
            crate::GradientArg::Backprop => diffeo::bijections::GradientMethod::Backprop,
            crate::GradientArg::Adjoint => diffeo::bijections::GradientMethod::Adjoint,
        },
    };
    let line = lib(diffeo::bench::run(&config))?.to_string();
    println!("{line}");
    if let Some(out) = &a.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        writeln!(f, "{line}").with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}
