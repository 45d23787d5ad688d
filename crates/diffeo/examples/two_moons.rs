//! Fits a flow to FFJORD's two moons and prints the test log-likelihood against the data's
//! entropy bound (E[log p] ≈ −2.393 nats).
//!
//! `cargo run --example two_moons -- [maf|realnvp|iaf] [steps]`

use diffeo::datasets::{two_moons, TWO_MOONS_EXPECTED_LOG_LIKELIHOOD};
use diffeo::fit::mean_log_likelihood;
use diffeo::prelude::*;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kind = args.first().map(String::as_str).unwrap_or("maf");
    let steps: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3000);
    let device = diffeo::cpu();
    let mut rng = StdRng::seed_from_u64(1);
    let train = Dataset::new(two_moons(20_000, &mut rng), 2);
    let val = Dataset::new(two_moons(5_000, &mut rng), 2);
    let test = Dataset::new(two_moons(20_000, &mut rng), 2);

    let flow = match kind {
        "maf" => maf(2, 8, vec![128, 128]).init(&device)?,
        "iaf" => iaf(2, 8, vec![128, 128]).init(&device)?,
        "realnvp" => realnvp(2, 8, vec![128, 128]).init(&device)?,
        other => anyhow::bail!("unknown flow {other:?} (maf, iaf, realnvp)"),
    };
    println!("{kind}: {} parameters, {steps} steps", flow.parameter_count());
    let config = FitConfig::new()
        .with_steps(steps)
        .with_batch_size(512)
        .with_learning_rate(2e-3)
        .with_schedule(Schedule::Cosine)
        .with_eval_every(250);
    let mut last = std::time::Instant::now();
    let (flow, report) = fit(flow, &train, Some(&val), &config, &mut |event| {
        if let FitEvent::Validation { step, log_likelihood, .. } = event {
            println!("step {step:>6}  val log-likelihood {log_likelihood:.4}  ({:.1}s)", last.elapsed().as_secs_f64());
            last = std::time::Instant::now();
        }
    })?;
    let (ll, se) = mean_log_likelihood(&flow, &test)?;
    println!(
        "test log-likelihood {ll:.4} ± {:.4} nats (2 s.e.); entropy bound {TWO_MOONS_EXPECTED_LOG_LIKELIHOOD}; {:.1} ms/step; best step {}",
        2.0 * se,
        1e3 * report.seconds / report.steps as f64,
        report.best_step
    );
    Ok(())
}
