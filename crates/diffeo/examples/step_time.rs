//! Milliseconds per maximum-likelihood training step (forward + backward + Adam) of MAF and NSF,
//! and
//! parameter counts of the default builders.
//!
//! `cargo run --release --example step_time [maf|nsf]` (or without `--release`: dependencies are
//! optimised in dev builds too). Set `DIFFEO_COMPOSED_SPLINES=1` to time the splines as composed
//! tensor ops instead of the fused CPU kernel.

use diffeo::prelude::*;
use rand::Rng;
use rand_distr::StandardNormal;

fn time_steps(dim: usize, hidden: usize, batch: usize, steps: usize) -> f64 {
    time_flow(maf(dim, 5, vec![hidden, hidden]).flow_config(), batch, steps)
}

fn time_flow(config: FlowConfig, batch: usize, steps: usize) -> f64 {
    let dim = config.dim;
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(0);
    let n = batch * 8;
    let data: Vec<f64> = (0..n * dim).map(|_| rng.sample(StandardNormal)).collect();
    let data = Dataset::new(data, dim);
    let flow = config.init(&device).expect("valid flow");
    // Warm up, then time.
    let warm = FitConfig::new().with_steps(5).with_batch_size(batch).with_eval_every(1_000_000);
    let (flow, _) = fit(flow, &data, None, &warm, &mut |_| {}).expect("fit");
    let cfg = FitConfig::new().with_steps(steps).with_batch_size(batch).with_eval_every(1_000_000);
    let start = std::time::Instant::now();
    let _ = fit(flow, &data, None, &cfg, &mut |_| {}).expect("fit");
    1e3 * start.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    let only = std::env::args().nth(1).unwrap_or_default();
    if only != "nsf" {
        maf_timings();
    }
    if only != "maf" {
        let ar = nsf(6, 5, vec![128, 128]).flow_config();
        let coupling = nsf_coupling(6, 5, vec![128, 128]).flow_config();
        println!("NSF-AR D=6, 5 transforms, hidden 128×2, 8 bins, batch 512: {:.2} ms/step", time_flow(ar, 512, 100));
        println!("NSF-C  D=6, 5 transforms, hidden 128×2, 8 bins, batch 512: {:.2} ms/step", time_flow(coupling, 512, 100));
    }
}

fn maf_timings() {
    let device = diffeo::cpu();
    for dim in [2, 8] {
        println!(
            "parameters, D = {dim}: MafConfig default {}, RealNvpConfig default {}",
            MafConfig::new(dim).init(&device).expect("valid flow").parameter_count(),
            RealNvpConfig::new(dim).init(&device).expect("valid flow").parameter_count()
        );
    }
    println!("MAF D=2, 5 transforms, hidden 128×2, batch 512: {:.2} ms/step", time_steps(2, 128, 512, 200));
    println!("MAF D=8, 5 transforms, hidden 256×2, batch 1024: {:.2} ms/step", time_steps(8, 256, 1024, 100));
}
