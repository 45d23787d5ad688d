//! The Rust side of the Python package's call-overhead table (`bench/python.sh`): the library
//! call behind `Flow.log_prob` ([`diffeo::pipeline::log_density`]) on the first N rows of a
//! `.npy` file, for each N: the fastest of 5 blocks of calls of at least 0.3 s each (as
//! `bench/python/overhead.py` times the Python side); one JSON line per N.
//!
//!     cargo run --release --example log_density_timing -- MODEL.dfo ROWS.npy 1 1000 100000

use std::path::Path;
use std::time::Instant;

// The front ends' allocator (the command line and the Python module use it), so that both sides
// of the comparison allocate alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        let mut seconds = f64::INFINITY;
        for _ in 0..5 {
            let (start, mut calls) = (Instant::now(), 0usize);
            while calls < 3 || start.elapsed().as_secs_f64() < 0.3 {
                diffeo::pipeline::log_density(&model, points, None)?;
                calls += 1;
            }
            seconds = seconds.min(start.elapsed().as_secs_f64() / calls as f64);
        }
        println!("{{\"lib\": \"diffeo-rust\", \"rows\": {n}, \"seconds_per_call\": {seconds:e}, \"rows_per_s\": {:.1}}}", n as f64 / seconds);
    }
    Ok(())
}
