//! The Rust side of the Python package's call-overhead table (`bench/python.sh`): the library
//! call behind `Flow.log_prob` ([`diffeo::pipeline::log_density`]) on the first N rows of a
//! `.npy` file, for each N, repeated until a second has passed; one JSON line per N.
//!
//!     cargo run --release --example log_density_timing -- MODEL.dfo ROWS.npy 1 1000 100000

use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        return Err("usage: log_density_timing MODEL.dfo ROWS.npy N...".into());
    }
    let model = diffeo::pipeline::load_model(Path::new(&args[1]))?;
    let rows = diffeo::data::read_file(Path::new(&args[2]))?;
    for n in &args[3..] {
        let n: usize = n.parse()?;
        if n > rows.rows() {
            return Err(format!("{n} rows asked, the file has {}", rows.rows()).into());
        }
        let points = &rows.values[..n * rows.cols];
        diffeo::pipeline::log_density(&model, points, None)?;
        let (start, mut calls) = (Instant::now(), 0usize);
        while calls < 3 || start.elapsed().as_secs_f64() < 1.0 {
            diffeo::pipeline::log_density(&model, points, None)?;
            calls += 1;
        }
        let seconds = start.elapsed().as_secs_f64() / calls as f64;
        println!("{{\"lib\": \"diffeo-rust\", \"rows\": {n}, \"seconds_per_call\": {seconds:e}, \"rows_per_s\": {:.1}}}", n as f64 / seconds);
    }
    Ok(())
}
