//! Simulators: anything that maps parameter rows θ to simulated observations x. A closure
//! ([`FnSimulator`]) from Rust, or any executable ([`ProgramSimulator`]) that reads θ rows as
//! CSV (no header) on its standard input and writes one x row per θ row on its standard output.
//! [`simulate`] runs batches, several processes in parallel, and hands every finished batch to
//! the caller before the next starts, so nothing simulated is lost when a later batch fails.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{FlowError, Result};

/// A simulator of x given θ.
pub trait Simulator: Sync {
    /// Simulates one x row per θ row (`theta` row-major with `theta_dim` columns); returns the x
    /// rows row-major. `batch` names the batch in error messages.
    fn simulate(&self, theta: &[f64], theta_dim: usize, batch: usize) -> Result<Simulated>;
}

/// Rows of a simulated batch: row-major values and their width.
#[derive(Clone, Debug, PartialEq)]
pub struct Simulated {
    /// Values, row-major.
    pub values: Vec<f64>,
    /// Columns.
    pub cols: usize,
}

/// A simulator from a closure `θ row → x row`.
pub struct FnSimulator<F: Fn(&[f64]) -> Vec<f64> + Sync> {
    f: F,
}

impl<F: Fn(&[f64]) -> Vec<f64> + Sync> FnSimulator<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        Self { f }
    }
}

impl<F: Fn(&[f64]) -> Vec<f64> + Sync> Simulator for FnSimulator<F> {
    fn simulate(&self, theta: &[f64], theta_dim: usize, batch: usize) -> Result<Simulated> {
        let mut values = Vec::new();
        let mut cols = None;
        for row in theta.chunks_exact(theta_dim) {
            let x = (self.f)(row);
            if *cols.get_or_insert(x.len()) != x.len() || x.is_empty() {
                return Err(FlowError::Simulation(format!("batch {batch}: the simulator returned rows of different widths")));
            }
            values.extend(x);
        }
        Ok(Simulated { values, cols: cols.unwrap_or(0) })
    }
}

/// An external program run through `sh -c COMMAND`: θ rows as CSV on its standard input, x rows
/// as CSV (commas or whitespace, no header) on its standard output, exit status 0.
#[derive(Clone, Debug)]
pub struct ProgramSimulator {
    /// The shell command.
    pub command: String,
    /// Kill a batch that runs longer than this.
    pub timeout: Option<Duration>,
    /// Columns every x row must have (`None`: whatever the first row has).
    pub x_dim: Option<usize>,
}

impl ProgramSimulator {
    /// Runs `command`.
    pub fn new(command: &str) -> Self {
        Self { command: command.to_string(), timeout: None, x_dim: None }
    }

    /// Kills batches that run longer than `timeout`.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Requires `x_dim` columns.
    pub fn with_x_dim(mut self, x_dim: Option<usize>) -> Self {
        self.x_dim = x_dim;
        self
    }
}

fn fail(batch: usize, why: String) -> FlowError {
    FlowError::Simulation(format!("simulator batch {batch}: {why}"))
}

impl Simulator for ProgramSimulator {
    fn simulate(&self, theta: &[f64], theta_dim: usize, batch: usize) -> Result<Simulated> {
        let rows = theta.len() / theta_dim.max(1);
        let mut input = String::with_capacity(theta.len() * 20);
        for row in theta.chunks_exact(theta_dim) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:?}")).collect();
            input.push_str(&cells.join(","));
            input.push('\n');
        }
        let mut command = Command::new("sh");
        command.arg("-c").arg(&self.command);
        // Its own process group, so that a timeout kills the program's children too.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(batch, format!("cannot start `sh -c {}`: {e}", self.command)))?;
        // Feed stdin and drain stdout/stderr on their own threads, so a program that writes
        // before reading everything cannot deadlock us.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let writer = std::thread::spawn(move || {
            // A program that exits without reading its input closes the pipe: not our error.
            let _ = stdin.write_all(input.as_bytes());
        });
        let out_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let r = stdout.read_to_string(&mut s);
            r.map(|_| s)
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {
                    if let Some(t) = self.timeout {
                        if start.elapsed() > t {
                            // The shell's own `kill` signals the group: procps-ng 4.0's
                            // /usr/bin/kill reads `-KILL -PGID` as `-1`, every process we may
                            // signal.
                            #[cfg(unix)]
                            let _ = Command::new("sh")
                                .arg("-c")
                                .arg(format!("kill -KILL -{}", child.id()))
                                .stdin(Stdio::null())
                                .stderr(Stdio::null())
                                .status();
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(fail(batch, format!("no answer after {:.0} s (--simulator-timeout); the process was killed", t.as_secs_f64())));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(fail(batch, format!("waiting for the program: {e}"))),
            }
        };
        let _ = writer.join();
        let out = out_reader.join().map_err(|_| fail(batch, "reading its output failed".into()))?;
        let err = err_reader.join().unwrap_or_default();
        let err_tail: String = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").chars().take(300).collect();
        if !status.success() {
            let code = status.code().map_or("a signal".to_string(), |c| format!("status {c}"));
            let tail = if err_tail.is_empty() { String::new() } else { format!(": {err_tail}") };
            return Err(fail(batch, format!("`{}` exited with {code}{tail}", self.command)));
        }
        let out = out.map_err(|e| fail(batch, format!("its output is not text ({e})")))?;
        let mut values = Vec::with_capacity(rows * self.x_dim.unwrap_or(1));
        let mut cols = self.x_dim;
        let mut got = 0;
        for (i, line) in out.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let cells: Vec<&str> = line.split(|c: char| c == ',' || c.is_whitespace()).filter(|c| !c.is_empty()).collect();
            let want = *cols.get_or_insert(cells.len());
            if cells.len() != want {
                return Err(fail(batch, format!("output line {} has {} values, expected {want}", i + 1, cells.len())));
            }
            for c in cells {
                let v = c.parse::<f64>().or_else(|_| match c.to_ascii_lowercase().as_str() {
                    "nan" => Ok(f64::NAN),
                    "inf" | "+inf" | "infinity" => Ok(f64::INFINITY),
                    "-inf" | "-infinity" => Ok(f64::NEG_INFINITY),
                    _ => Err(()),
                });
                values.push(v.map_err(|_| fail(batch, format!("output line {} holds {c:?}, not a number", i + 1)))?);
            }
            got += 1;
        }
        if got != rows {
            return Err(fail(batch, format!("{rows} θ rows in, {got} x rows out")));
        }
        Ok(Simulated { values, cols: cols.unwrap_or(0) })
    }
}

/// Receives every finished batch: `(batch index, θ rows, x rows)`.
pub type KeepBatch<'a> = dyn FnMut(usize, &[f64], &Simulated) -> Result<()> + 'a;

/// Simulates x for every θ row in batches of `batch_size` rows, `workers` batches at a time,
/// and hands each finished batch `(index, θ rows, x rows)` to `keep` in order (saving it)
/// before starting more; a failure stops the run after the other batches of its wave are kept.
/// Returns the x rows of all batches.
pub fn simulate(
    simulator: &dyn Simulator,
    theta: &[f64],
    theta_dim: usize,
    batch_size: usize,
    workers: usize,
    keep: &mut KeepBatch,
) -> Result<Simulated> {
    let batch_size = batch_size.max(1);
    let chunks: Vec<&[f64]> = theta.chunks(batch_size * theta_dim).collect();
    let mut all = Simulated { values: Vec::new(), cols: 0 };
    for (wave_index, wave) in chunks.chunks(workers.max(1)).enumerate() {
        let first = wave_index * workers.max(1);
        let results: Vec<Result<Simulated>> = std::thread::scope(|s| {
            let handles: Vec<_> = wave
                .iter()
                .enumerate()
                .map(|(i, t)| s.spawn(move || simulator.simulate(t, theta_dim, first + i + 1)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(FlowError::Simulation("a simulator thread panicked".into())))).collect()
        });
        // Every successful batch of the wave is kept, even after a failed one.
        let mut failure = None;
        for (i, r) in results.into_iter().enumerate() {
            let x = match r {
                Ok(x) if all.cols != 0 && x.cols != all.cols => {
                    Err(fail(first + i + 1, format!("x rows have {} values, earlier batches had {}", x.cols, all.cols)))
                }
                other => other,
            };
            match x {
                Ok(x) => {
                    all.cols = x.cols;
                    keep(first + i, wave[i], &x)?;
                    all.values.extend(x.values);
                }
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
    }
    Ok(all)
}
