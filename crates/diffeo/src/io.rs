//! Model files: one safetensors file holding the weights and, in its metadata, the format
//! version, the architecture ([`FlowConfig`] as JSON), a checksum of the weights and any extra
//! key/value pairs (e.g. training summaries). Saving is atomic: a temporary file in the same
//! folder is written, flushed and renamed over the target, so an existing model is never lost.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{FlowError, Result};
use crate::flow::{Flow, FlowConfig};

/// Identifies our files.
pub const FORMAT_NAME: &str = "diffeo-flow";
/// The model-file version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

struct Collect {
    tensors: Vec<(Vec<usize>, Dtype, Vec<u8>)>,
    error: Option<String>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let is_f64 = matches!(t.dtype(), DType::F64);
        let result = if is_f64 {
            t.try_into_vec_as::<f64>().map(|v| (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        } else {
            t.try_into_vec_as::<f32>().map(|v| (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        };
        match result {
            Ok((dt, bytes)) => self.tensors.push((shape, dt, bytes)),
            Err(e) => self.error = Some(format!("{e:?}")),
        }
    }
}

struct Restore {
    tensors: Vec<(Vec<usize>, Vec<f64>)>,
    next: usize,
    error: Option<String>,
}

impl ModuleMapper for Restore {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.next;
        self.next += 1;
        let Some((shape, values)) = self.tensors.get(i).cloned() else {
            self.error.get_or_insert_with(|| format!("file has fewer tensors than the architecture needs (at {i})"));
            return param;
        };
        let expected = param.val().dims().to_vec();
        if shape != expected {
            self.error
                .get_or_insert_with(|| format!("tensor {i} has shape {shape:?}, the architecture needs {expected:?}"));
            return param;
        }
        param.map(|t| {
            let device = t.device();
            Tensor::<D>::from_data(TensorData::new(values, shape), &device)
        })
    }
}

/// FNV-1a, 64 bit.
fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    let mut h = h;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn io_err(path: &Path, source: std::io::Error) -> FlowError {
    FlowError::Io { path: path.display().to_string(), source }
}

/// Writes `bytes` to `path` atomically (temporary file + rename in the same folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(io_err(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("folder {} does not exist", dir.display())),
        ));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Serialises a flow (weights + architecture + `extra` metadata) to bytes. A flow with
/// non-finite weights is refused, so no NaN model is ever written.
pub fn to_bytes(flow: &Flow, extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut c = Collect { tensors: Vec::new(), error: None };
    flow.visit(&mut c);
    if let Some(e) = c.error {
        return Err(FlowError::Backend(e));
    }
    if let Some(i) = c.tensors.iter().position(|(_, dt, bytes)| match dt {
        Dtype::F64 => bytes.chunks_exact(8).any(|b| !f64::from_le_bytes(b.try_into().expect("8 bytes")).is_finite()),
        _ => bytes.chunks_exact(4).any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
    }) {
        return Err(FlowError::NonFinite { what: format!("model parameter tensor {i}"), row: 0, col: 0, value: f64::NAN });
    }
    let mut checksum = FNV_OFFSET;
    for (_, _, bytes) in &c.tensors {
        checksum = fnv1a(checksum, bytes);
    }
    let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (format!("x.{k}"), v.clone())).collect();
    meta.insert("format".into(), FORMAT_NAME.into());
    meta.insert("version".into(), FORMAT_VERSION.to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(flow.config()).map_err(|e| FlowError::Backend(e.to_string()))?,
    );
    meta.insert("checksum".into(), format!("{checksum:016x}"));
    meta.insert("tensors".into(), c.tensors.len().to_string());
    let views: Vec<(String, TensorView)> = c
        .tensors
        .iter()
        .enumerate()
        .map(|(i, (shape, dt, bytes))| {
            let shape = if shape.is_empty() { vec![1] } else { shape.clone() };
            (format!("p{i:05}"), TensorView::new(*dt, shape, bytes).expect("consistent tensor view"))
        })
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| FlowError::Backend(e.to_string()))
}

/// Saves a flow to `path` atomically, with optional extra metadata.
pub fn save(flow: &Flow, path: impl AsRef<Path>, extra: &BTreeMap<String, String>) -> Result<()> {
    let bytes = to_bytes(flow, extra)?;
    write_atomic(path.as_ref(), &bytes)
}

/// A loaded model: the flow and the extra metadata it was saved with.
#[derive(Debug)]
pub struct LoadedModel {
    /// The flow (batch norm in evaluation mode).
    pub flow: Flow,
    /// Extra metadata given to [`save`].
    pub extra: BTreeMap<String, String>,
}

/// Loads a flow from bytes; `name` is used in error messages.
pub fn from_bytes(bytes: &[u8], name: &str, device: &Device) -> Result<LoadedModel> {
    let bad = |reason: String| FlowError::BadModelFile { path: name.to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("{e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("{e}")))?;
    let meta = header.metadata().clone().ok_or_else(|| bad("no metadata".into()))?;
    if meta.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(bad("not a diffeo model (format tag missing)".into()));
    }
    let version = meta.get("version").cloned().unwrap_or_default();
    if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
        return Err(FlowError::UnsupportedVersion { path: name.to_string(), found: version, supported: FORMAT_VERSION });
    }
    let config: FlowConfig = serde_json::from_str(meta.get("config").ok_or_else(|| bad("no architecture".into()))?)
        .map_err(|e| bad(format!("architecture: {e}")))?;
    let count: usize = meta
        .get("tensors")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no tensor count".into()))?;
    let mut checksum = FNV_OFFSET;
    let mut tensors = Vec::with_capacity(count);
    for i in 0..count {
        let view = st.tensor(&format!("p{i:05}")).map_err(|e| bad(format!("tensor {i}: {e}")))?;
        checksum = fnv1a(checksum, view.data());
        let values: Vec<f64> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            Dtype::F64 => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            other => return Err(bad(format!("tensor {i} has unsupported type {other:?}"))),
        };
        tensors.push((view.shape().to_vec(), values));
    }
    if meta.get("checksum") != Some(&format!("{checksum:016x}")) {
        return Err(bad("checksum mismatch: the weights are corrupted".into()));
    }
    if let Some((i, _)) = tensors.iter().enumerate().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())) {
        return Err(bad(format!("tensor {i} holds non-finite values")));
    }
    let flow = config.try_init(device).map_err(|e| bad(format!("architecture: {e}")))?;
    // Rank-0 tensors are stored with shape [1]; restore the architecture's shapes.
    let mut restore = Restore { tensors, next: 0, error: None };
    let flow = flow.map(&mut restore);
    if let Some(e) = restore.error {
        return Err(bad(e));
    }
    if restore.next != count {
        return Err(bad(format!("file has {count} tensors, the architecture uses {}", restore.next)));
    }
    let extra = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("x.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(LoadedModel { flow, extra })
}

/// Loads a flow saved by [`save`] onto `device`.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    from_bytes(&bytes, &path.display().to_string(), device)
}
