//! Model files: one safetensors file holding the weights and, in its metadata, the format
//! version, the architecture ([`FlowConfig`] as JSON), a checksum of the weights and any extra
//! key/value pairs (e.g. training summaries). Saving is atomic: a temporary file in the same
//! folder is written, flushed and renamed over the target, so an existing model is never lost.
//!
//! **Version 2** (written since the open core) names every tensor by its dotted path in the model,
//! so any safetensors reader can list the weights and map them to the architecture JSON:
//! `layers.3.made.layers.0.weight` is the first masked layer of MADE in entry 3 of the
//! configuration's `layers`; `base.loc` a learnable base mean; `embedding.layers.0.weight` the
//! context embedding. The checksum covers the tensors in name order. **Version 1** files (tensors
//! `p00000`, `p00001`, … in the order the model visits its parameters) still load, with the same
//! behaviour.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{FlowError, Result};
use crate::flow::{Flow, FlowConfig};

/// Identifies our files.
pub const FORMAT_NAME: &str = "diffeo-flow";
/// The model-file version this build writes (it reads this one and every earlier one).
pub const FORMAT_VERSION: u32 = 2;

/// Dotted paths of a module's parameters, from burn's traversal: struct fields and vector indices
/// are kept; enum variants and the `inner` of an [`Oriented`](crate::bijections::Oriented) are
/// left out (they are in the architecture JSON).
#[derive(Default)]
struct ModulePath {
    parts: Vec<Option<String>>,
}

impl ModulePath {
    fn enter(&mut self, name: &str, container: &str) {
        let skip = container.starts_with("Enum:") || (container == "Struct:Oriented" && name == "inner");
        self.parts.push((!skip).then(|| name.to_string()));
    }

    fn exit(&mut self) {
        self.parts.pop();
    }

    fn current(&self) -> String {
        self.parts.iter().flatten().cloned().collect::<Vec<_>>().join(".")
    }
}

/// A stored tensor: name, shape, type and little-endian bytes.
type Stored = (String, Vec<usize>, Dtype, Vec<u8>);

struct Collect {
    path: ModulePath,
    /// Whether to read the values (not only the names and shapes).
    read_data: bool,
    tensors: Vec<Stored>,
    error: Option<String>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        if !self.read_data {
            self.tensors.push((self.path.current(), shape, Dtype::F32, Vec::new()));
            return;
        }
        let is_f64 = matches!(t.dtype(), DType::F64);
        let result = if is_f64 {
            t.try_into_vec_as::<f64>().map(|v| (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        } else {
            t.try_into_vec_as::<f32>().map(|v| (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        };
        match result {
            Ok((dt, bytes)) => self.tensors.push((self.path.current(), shape, dt, bytes)),
            Err(e) => self.error = Some(format!("{e:?}")),
        }
    }
}

/// Where the restored tensors come from: by position (version 1) or by name (version 2).
enum Source {
    Positional(Vec<(Vec<usize>, Vec<f64>)>),
    Named(HashMap<String, (Vec<usize>, Vec<f64>)>),
}

struct Restore {
    path: ModulePath,
    source: Source,
    /// Index renaming of the chain: position in the chain → entry of the configuration's layers.
    rename: Vec<usize>,
    next: usize,
    used: Vec<String>,
    error: Option<String>,
}

impl ModuleMapper for Restore {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let i = self.next;
        self.next += 1;
        let (label, found) = match &self.source {
            Source::Positional(t) => (format!("tensor {i}"), t.get(i).cloned()),
            Source::Named(t) => {
                let name = public_name(&self.path.current(), &self.rename);
                let found = t.get(&name).cloned();
                self.used.push(name.clone());
                (format!("tensor {name}"), found)
            }
        };
        let Some((shape, values)) = found else {
            self.error.get_or_insert_with(|| format!("the file lacks {label}, which the architecture needs"));
            return param;
        };
        let expected = param.val().dims().to_vec();
        if shape != expected {
            self.error.get_or_insert_with(|| format!("{label} has shape {shape:?}, the architecture needs {expected:?}"));
            return param;
        }
        param.map(|t| {
            let device = t.device();
            Tensor::<D>::from_data(TensorData::new(values, shape), &device)
        })
    }
}

/// The stored name of a parameter at burn path `path`: `transform.layers.K.…` becomes
/// `layers.I.…` with `I` the entry of the configuration's `layers` (factor-out steps count).
fn public_name(path: &str, rename: &[usize]) -> String {
    if let Some(rest) = path.strip_prefix("transform.layers.") {
        let (k, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let Some(&i) = k.parse::<usize>().ok().and_then(|k| rename.get(k)) {
            return if tail.is_empty() { format!("layers.{i}") } else { format!("layers.{i}.{tail}") };
        }
    }
    path.to_string()
}

/// For each layer of the chain, its entry in the configuration's `layers`.
fn chain_entries(config: &FlowConfig) -> Vec<usize> {
    config
        .layers
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, crate::bijections::LayerConfig::FactorOut(_)))
        .map(|(i, _)| i)
        .collect()
}

/// A flow's parameters under their stored names, in the order the flow visits them (values read
/// only with `read_data`).
fn collect(flow: &Flow, read_data: bool) -> Result<Vec<Stored>> {
    let mut c = Collect { path: ModulePath::default(), read_data, tensors: Vec::new(), error: None };
    flow.visit(&mut c);
    if let Some(e) = c.error {
        return Err(FlowError::Backend(e));
    }
    let rename = chain_entries(flow.config());
    Ok(c.tensors.into_iter().map(|(p, shape, dt, bytes)| (public_name(&p, &rename), shape, dt, bytes)).collect())
}

/// The stored names of a flow's parameters, in the order the flow visits them.
pub fn tensor_names(flow: &Flow) -> Vec<String> {
    collect(flow, false).map(|t| t.into_iter().map(|(name, ..)| name).collect()).unwrap_or_default()
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

/// Serialises a flow (weights + architecture + `extra` metadata) to bytes, in the current format
/// version. A flow with non-finite weights is refused, so no NaN model is ever written.
pub fn to_bytes(flow: &Flow, extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    to_bytes_with_members(flow, &[], extra)
}

/// The prefix of the stored names of ensemble member `i` (1-based: the first flow has none).
fn member_prefix(i: usize) -> String {
    format!("member{i}/")
}

/// [`to_bytes`] of a flow and further flows stored beside it (an ensemble's members): their
/// tensors named `member{i}/…`, their architectures under `member{i}.config`, their count
/// under `members`. Files without members are byte-for-byte what [`to_bytes`] always wrote.
pub fn to_bytes_with_members(flow: &Flow, members: &[Flow], extra: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut tensors = collect(flow, true)?;
    for (i, m) in members.iter().enumerate() {
        let prefix = member_prefix(i + 1);
        tensors.extend(collect(m, true)?.into_iter().map(|(name, shape, dt, bytes)| (format!("{prefix}{name}"), shape, dt, bytes)));
    }
    if let Some((name, ..)) = tensors.iter().find(|(_, _, dt, bytes)| match dt {
        Dtype::F64 => bytes.chunks_exact(8).any(|b| !f64::from_le_bytes(b.try_into().expect("8 bytes")).is_finite()),
        _ => bytes.chunks_exact(4).any(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()),
    }) {
        return Err(FlowError::NonFinite { what: format!("model parameter {name}"), row: 0, col: 0, value: f64::NAN });
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = tensors.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(FlowError::Backend(format!("two parameters share the name {}", w[0].0)));
    }
    let mut checksum = FNV_OFFSET;
    for (_, _, _, bytes) in &tensors {
        checksum = fnv1a(checksum, bytes);
    }
    let mut meta: HashMap<String, String> = extra.iter().map(|(k, v)| (format!("x.{k}"), v.clone())).collect();
    meta.insert("format".into(), FORMAT_NAME.into());
    meta.insert("version".into(), FORMAT_VERSION.to_string());
    meta.insert("config".into(), serde_json::to_string(flow.config()).map_err(|e| FlowError::Backend(e.to_string()))?);
    for (i, m) in members.iter().enumerate() {
        meta.insert(format!("member{}.config", i + 1), serde_json::to_string(m.config()).map_err(|e| FlowError::Backend(e.to_string()))?);
    }
    if !members.is_empty() {
        meta.insert("members".into(), members.len().to_string());
    }
    meta.insert("checksum".into(), format!("{checksum:016x}"));
    meta.insert("tensors".into(), tensors.len().to_string());
    let views = tensors
        .iter()
        .map(|(name, shape, dt, bytes)| {
            let shape = if shape.is_empty() { vec![1] } else { shape.clone() };
            TensorView::new(*dt, shape, bytes).map(|v| (name.clone(), v)).map_err(|e| FlowError::Backend(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(meta)).map_err(|e| FlowError::Backend(e.to_string()))
}

/// Saves a flow to `path` atomically, with optional extra metadata.
pub fn save(flow: &Flow, path: impl AsRef<Path>, extra: &BTreeMap<String, String>) -> Result<()> {
    save_with_members(flow, &[], path, extra)
}

/// [`save`] of a flow and an ensemble's further members ([`to_bytes_with_members`]).
pub fn save_with_members(flow: &Flow, members: &[Flow], path: impl AsRef<Path>, extra: &BTreeMap<String, String>) -> Result<()> {
    let bytes = to_bytes_with_members(flow, members, extra)?;
    write_atomic(path.as_ref(), &bytes)
}

/// A loaded model: the flow and the extra metadata it was saved with.
#[derive(Debug)]
pub struct LoadedModel {
    /// The flow (batch norm in evaluation mode).
    pub flow: Flow,
    /// Further flows stored beside it (an ensemble's members; usually none).
    pub members: Vec<Flow>,
    /// Extra metadata given to [`save`].
    pub extra: BTreeMap<String, String>,
}

/// The values of a stored tensor as `f64`.
fn values(view: &TensorView, label: &str, bad: &dyn Fn(String) -> FlowError) -> Result<Vec<f64>> {
    match view.dtype() {
        Dtype::F32 => Ok(view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()),
        Dtype::F64 => Ok(view.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        other => Err(bad(format!("{label} has unsupported type {other:?}"))),
    }
}

/// Loads a flow from bytes (format version 1 or 2); `name` is used in error messages.
pub fn from_bytes(bytes: &[u8], name: &str, device: &Device) -> Result<LoadedModel> {
    let bad = |reason: String| FlowError::BadModelFile { path: name.to_string(), reason };
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("{e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("{e}")))?;
    let meta = header.metadata().clone().ok_or_else(|| bad("no metadata".into()))?;
    if meta.get("format").map(String::as_str) != Some(FORMAT_NAME) {
        return Err(bad("not a diffeo model (format tag missing)".into()));
    }
    let version_text = meta.get("version").cloned().unwrap_or_default();
    let version = match version_text.parse::<u32>() {
        Ok(v @ 1..=FORMAT_VERSION) => v,
        _ => return Err(FlowError::UnsupportedVersion { path: name.to_string(), found: version_text, supported: FORMAT_VERSION }),
    };
    let config: FlowConfig = serde_json::from_str(meta.get("config").ok_or_else(|| bad("no architecture".into()))?)
        .map_err(|e| bad(format!("architecture: {e}")))?;
    let count: usize = meta.get("tensors").and_then(|s| s.parse().ok()).ok_or_else(|| bad("no tensor count".into()))?;
    let mut checksum = FNV_OFFSET;
    let source = if version == 1 {
        let mut tensors = Vec::with_capacity(count);
        for i in 0..count {
            let view = st.tensor(&format!("p{i:05}")).map_err(|e| bad(format!("tensor {i}: {e}")))?;
            checksum = fnv1a(checksum, view.data());
            tensors.push((view.shape().to_vec(), values(&view, &format!("tensor {i}"), &bad)?));
        }
        Source::Positional(tensors)
    } else {
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        if names.len() != count {
            return Err(bad(format!("the file holds {} tensors, its metadata says {count}", names.len())));
        }
        let mut tensors = HashMap::with_capacity(count);
        for n in names {
            let view = st.tensor(&n).map_err(|e| bad(format!("tensor {n}: {e}")))?;
            checksum = fnv1a(checksum, view.data());
            let v = values(&view, &format!("tensor {n}"), &bad)?;
            tensors.insert(n, (view.shape().to_vec(), v));
        }
        Source::Named(tensors)
    };
    if meta.get("checksum") != Some(&format!("{checksum:016x}")) {
        return Err(bad("checksum mismatch: the weights are corrupted".into()));
    }
    let nonfinite = match &source {
        Source::Positional(t) => t.iter().position(|(_, v)| v.iter().any(|x| !x.is_finite())).map(|i| format!("tensor {i}")),
        Source::Named(t) => t.iter().find(|(_, (_, v))| v.iter().any(|x| !x.is_finite())).map(|(n, _)| format!("tensor {n}")),
    };
    if let Some(what) = nonfinite {
        return Err(bad(format!("{what} holds non-finite values")));
    }
    // An ensemble's members: their tensors leave the first flow's source for their own.
    let member_count: usize = match meta.get("members") {
        Some(m) => m.parse().map_err(|_| bad(format!("bad member count {m:?}")))?,
        None => 0,
    };
    let mut member_sources = Vec::with_capacity(member_count);
    let source = match source {
        Source::Named(mut all) if member_count > 0 => {
            for i in 1..=member_count {
                let prefix = member_prefix(i);
                let names: Vec<String> = all.keys().filter(|n| n.starts_with(&prefix)).cloned().collect();
                let own: HashMap<_, _> =
                    names.into_iter().filter_map(|n| all.remove(&n).map(|v| (n[prefix.len()..].to_string(), v))).collect();
                let config: FlowConfig = serde_json::from_str(
                    meta.get(&format!("member{i}.config")).ok_or_else(|| bad(format!("no architecture of member {i}")))?,
                )
                .map_err(|e| bad(format!("architecture of member {i}: {e}")))?;
                member_sources.push((config, Source::Named(own)));
            }
            Source::Named(all)
        }
        Source::Positional(_) if member_count > 0 => return Err(bad("a version-1 file cannot hold members".into())),
        other => other,
    };
    let flow = restore_flow(&config, source, device).map_err(bad)?;
    let members = member_sources
        .into_iter()
        .enumerate()
        .map(|(i, (c, src))| restore_flow(&c, src, device).map_err(|e| bad(format!("member {}: {e}", i + 1))))
        .collect::<Result<Vec<_>>>()?;
    let extra = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("x.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(LoadedModel { flow, members, extra })
}

/// A flow of architecture `config` with the weights of `source`, which it must use up.
fn restore_flow(config: &FlowConfig, source: Source, device: &Device) -> std::result::Result<Flow, String> {
    let count = match &source {
        Source::Positional(t) => t.len(),
        Source::Named(t) => t.len(),
    };
    let flow = config.init(device).map_err(|e| format!("architecture: {e}"))?;
    let rename = chain_entries(config);
    // Rank-0 tensors are stored with shape [1]; restore the architecture's shapes.
    let mut restore = Restore { path: ModulePath::default(), source, rename, next: 0, used: Vec::new(), error: None };
    let flow = flow.map(&mut restore);
    if let Some(e) = restore.error {
        return Err(e);
    }
    if restore.next != count {
        return Err(format!("file has {count} tensors, the architecture uses {}", restore.next));
    }
    Ok(flow)
}

/// Loads a flow saved by [`save`] onto `device`.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    from_bytes(&bytes, &path.display().to_string(), device)
}
