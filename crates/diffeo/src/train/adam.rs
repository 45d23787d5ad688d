//! Adam (Kingma & Ba 2015) for the training loop, as burn's `Adam` computes it:
//! `m ← β₁m + (1 − β₁)g`, `v ← β₂v + (1 − β₂)g²`,
//! `w ← w − lr · (m·√(1 − β₂ᵗ)/(1 − β₁ᵗ)) / (√v + ε·√(1 − β₂ᵗ))`, with `g ← g + λw` under weight
//! decay λ. On the CPU each parameter takes one pass over its elements that also sums the
//! gradient shards, instead of a dozen tensor operations and as many allocations per parameter
//! (8–11 % of a MAF step); elsewhere, and for dtypes other than f32/f64, it is burn's optimizer
//! fed the summed gradients. Both give the same numbers: the pass repeats burn's operations in
//! the same order and precision (scalars rounded to f32 as burn does).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::{decay::WeightDecayConfig, AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{DType, Tensor};

use crate::error::{FlowError, Result};
use crate::flow::Flow;
use crate::nn::fused::Real;

const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;

/// Adam's state for one training run.
pub(crate) struct Adam {
    epsilon: f32,
    weight_decay: f32,
    moments: HashMap<ParamId, Moments>,
    fallback: Option<ModuleOptimizer>,
}

/// Step count and the two moments of one parameter.
enum Moments {
    F32(usize, Vec<f32>, Vec<f32>),
    F64(usize, Vec<f64>, Vec<f64>),
}

impl Adam {
    /// Adam with `ε` and weight decay `λ` (0: none) for parameters on `device`.
    pub(crate) fn new(epsilon: f32, weight_decay: f32, device: &burn::tensor::Device) -> Self {
        let fused = crate::on_cpu(device) && matches!(device.settings().float_dtype, burn::tensor::FloatDType::F32 | burn::tensor::FloatDType::F64);
        let fallback = (!fused).then(|| {
            let mut config = AdamConfig::new().with_beta_1(BETA_1).with_beta_2(BETA_2).with_epsilon(epsilon);
            if weight_decay > 0.0 {
                config = config.with_weight_decay(Some(WeightDecayConfig::new(weight_decay)));
            }
            config.init()
        });
        Self { epsilon, weight_decay, moments: HashMap::new(), fallback }
    }

    /// One step at rate `lr` with the gradient `parts` (summed, in order).
    pub(crate) fn step(&mut self, lr: f64, model: Flow, mut parts: Vec<GradientsParams>, ids: &[(ParamId, usize)]) -> Result<Flow> {
        if let Some(optim) = self.fallback.as_mut() {
            let grads = super::sum_gradients(parts, ids);
            return Ok(optim.step(lr, model, grads));
        }
        let mut mapper = Step { adam: self, lr, parts: &mut parts, failed: false };
        let model = model.map(&mut mapper);
        if mapper.failed {
            return Err(FlowError::Backend("Adam: a parameter or its gradient is not a CPU tensor in the device's float type".into()));
        }
        Ok(model)
    }
}

struct Step<'a> {
    adam: &'a mut Adam,
    lr: f64,
    parts: &'a mut [GradientsParams],
    failed: bool,
}

impl ModuleMapper for Step<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let grads: Vec<Tensor<D>> = self.parts.iter_mut().filter_map(|p| p.remove::<D>(id)).collect();
        let tensor = if grads.is_empty() {
            tensor
        } else {
            match self.adam.update(id, &tensor, grads, self.lr) {
                Some(t) => t,
                None => {
                    self.failed = true;
                    tensor
                }
            }
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

impl Adam {
    /// The updated parameter, or `None` when it is not a CPU tensor in f32 or f64.
    fn update<const D: usize>(&mut self, id: ParamId, tensor: &Tensor<D>, grads: Vec<Tensor<D>>, lr: f64) -> Option<Tensor<D>> {
        let shape = tensor.shape();
        let w = crate::custom_op::flex_of(tensor.clone().inner())?;
        let g: Vec<_> = grads.into_iter().map(|g| crate::custom_op::flex_of(g.inner())).collect::<Option<_>>()?;
        if g.iter().any(|g| g.dtype() != w.dtype()) {
            return None;
        }
        let n = shape.num_elements();
        let (eps, decay) = (self.epsilon, self.weight_decay);
        let new = match w.dtype() {
            DType::F32 => {
                let state = self.moments.entry(id).or_insert_with(|| Moments::F32(0, vec![0.0; n], vec![0.0; n]));
                let Moments::F32(t, m, v) = state else { return None };
                pass::<f32>(&w, &g, (t, m, v), lr, eps, decay)?
            }
            DType::F64 => {
                let state = self.moments.entry(id).or_insert_with(|| Moments::F64(0, vec![0.0; n], vec![0.0; n]));
                let Moments::F64(t, m, v) = state else { return None };
                pass::<f64>(&w, &g, (t, m, v), lr, eps, decay)?
            }
            _ => return None,
        };
        let updated: Tensor<D> = crate::custom_op::plain_rank::<D>(new);
        let mut out = Tensor::from_inner(updated);
        if tensor.is_require_grad() {
            out = out.require_grad();
        }
        Some(out)
    }
}

/// Adam's pass over one parameter `w` with gradient parts `g`, moments `(t, m, v)` updated.
fn pass<T: Real>(
    w: &burn::backend::flex::FlexTensor,
    g: &[burn::backend::flex::FlexTensor],
    (t, m, v): (&mut usize, &mut [T], &mut [T]),
    lr: f64,
    eps: f32,
    decay: f32,
) -> Option<burn::backend::flex::FlexTensor> {
    let wv = crate::nn::fused::values::<T>(w);
    let gv: Vec<_> = g.iter().map(crate::nn::fused::values::<T>).collect();
    if gv.iter().any(|g| g.len() != wv.len()) || m.len() != wv.len() {
        return None;
    }
    *t += 1;
    let time = *t as i32;
    let s = |x: f32| T::from_f64(x as f64);
    let (b1, b2, f1, f2) = (s(BETA_1), s(BETA_2), s(1.0 - BETA_1), s(1.0 - BETA_2));
    let bias2 = (1.0 - BETA_2.powi(time)).sqrt();
    let combined = s(bias2 / (1.0 - BETA_1.powi(time)));
    let floor = s(eps * bias2);
    let (lr, decay) = (T::from_f64(lr), s(decay));
    // The gradient parts summed in order, plus the decay term: `g = λw + Σ gₛ`.
    let mut grad = gv[0].to_vec();
    for part in &gv[1..] {
        grad.iter_mut().zip(part.iter()).for_each(|(g, &p)| *g = *g + p);
    }
    if decay != T::ZERO {
        grad.iter_mut().zip(wv.iter()).for_each(|(g, &w)| *g = w * decay + *g);
    }
    // The moments start at zero, so the first step's `0·β + (1 − β)g` is burn's `(1 − β)g`.
    let mut out = vec![T::ZERO; wv.len()];
    const CHUNK: usize = 1 << 14;
    use rayon::prelude::*;
    out.par_chunks_mut(CHUNK)
        .zip(wv.par_chunks(CHUNK))
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|(((out, w), g), (m, v))| {
            for ((((o, &w), &g), m), v) in out.iter_mut().zip(w).zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = *m * b1 + g * f1;
                *v = *v * b2 + g * g * f2;
                *o = w - *m * combined / (v.sqrt() + floor) * lr;
            }
        });
    Some(crate::nn::fused::tensor(out, w.layout().shape().to_vec()))
}

#[cfg(test)]
mod tests {
    use burn::module::ModuleVisitor;
    use burn::optim::{decay::WeightDecayConfig, AdamConfig, GradientsParams};

    use super::*;
    use crate::families::maf;
    use crate::train::ParamIds;

    /// Gradients of the mean negative log-likelihood of rows `rows` of `x` (3 columns).
    fn gradients(model: &Flow, x: &[f64], rows: std::ops::Range<usize>) -> GradientsParams {
        let n = rows.len();
        let t = crate::tensor::matrix(x[rows.start * 3..rows.end * 3].to_vec(), n, 3, &model.device());
        let loss = model.log_prob_unchecked(t, None).unwrap().mean().neg();
        GradientsParams::from_grads(loss.backward(), model)
    }

    fn weights(model: &Flow) -> Vec<f64> {
        struct All(Vec<f64>);
        impl ModuleVisitor for All {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let w = param.val();
                let n = w.shape().num_elements();
                self.0.extend(crate::tensor::to_vec(w.reshape([n])).unwrap());
            }
        }
        let mut all = All(Vec::new());
        model.visit(&mut all);
        all.0
    }

    /// The fused pass, fed two gradient parts, moves the weights exactly as burn's Adam fed
    /// their sum, with and without weight decay, over several steps.
    #[test]
    fn the_fused_pass_repeats_burns_adam() {
        let device = crate::cpu().autodiff();
        let x: Vec<f64> = (0..60).map(|i| ((i * 37 % 23) as f64 / 7.0 - 1.5) * if i % 2 == 0 { 1.0 } else { -0.7 }).collect();
        for decay in [0.0f32, 0.05] {
            let flow = maf(3, 2, vec![8]).with_seed(3).init(&device).unwrap();
            let mut ids = ParamIds(Vec::new());
            flow.visit(&mut ids);
            let mut config = AdamConfig::new().with_epsilon(1e-8);
            if decay > 0.0 {
                config = config.with_weight_decay(Some(WeightDecayConfig::new(decay)));
            }
            let mut reference = config.init();
            let mut fused = Adam::new(1e-8, decay, &device);
            assert!(fused.fallback.is_none(), "the CPU takes the fused pass");
            let (mut a, mut b) = (flow.clone(), flow);
            for step in 0..4 {
                let lr = 1e-2 / (1.0 + step as f64);
                let parts = vec![gradients(&a, &x, 0..12), gradients(&a, &x, 12..20)];
                let summed = crate::train::sum_gradients(vec![gradients(&b, &x, 0..12), gradients(&b, &x, 12..20)], &ids.0);
                a = fused.step(lr, a, parts, &ids.0).unwrap();
                b = reference.step(lr, b, summed);
                let (wa, wb) = (weights(&a), weights(&b));
                assert_eq!(wa.len(), wb.len());
                for (i, (p, q)) in wa.iter().zip(&wb).enumerate() {
                    assert!((p - q).abs() <= 1e-7 * (1.0 + q.abs()), "decay {decay}, step {step}, weight {i}: {p} vs {q}");
                }
            }
            assert_ne!(weights(&a), weights(&maf(3, 2, vec![8]).with_seed(3).init(&device).unwrap()), "the weights moved");
        }
    }
}
