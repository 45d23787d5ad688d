//! Plumbing for autodiff steps written by hand on the CPU backend whose backward passes run
//! solvers (the adjoint ODE solve, implicit fixed-point gradients): moving tensors between the
//! dispatch API and burn's CPU primitives, and errors of backward passes.
//!
//! burn's backward pass cannot return an error, so a step whose backward solve fails registers
//! no gradient and leaves its error here ([`record_backward_failure`]); the training loop calls
//! [`take_backward_failure`] after every backward pass.

use std::cell::RefCell;

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex};
use burn::tensor::Tensor;

use crate::error::{FlowError, Result};

thread_local! {
    static FAILURE: RefCell<Option<FlowError>> = const { RefCell::new(None) };
}

/// Keeps the first error of a backward pass on this thread until it is taken.
pub(crate) fn record_backward_failure(e: FlowError) {
    FAILURE.with(|f| {
        f.borrow_mut().get_or_insert(e);
    });
}

/// The error of a backward solve on this thread since the last call, if one failed (its
/// gradients were then not registered).
pub fn take_backward_failure() -> Result<()> {
    match FAILURE.with(|f| f.borrow_mut().take()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The autodiff primitive of a CPU tensor (enabling autodiff on a plain one) and its context.
pub(crate) fn autodiff_primitive(t: Tensor<2>) -> Option<(FloatTensor<Autodiff<Flex>>, DispatchAutodiffContext)> {
    let d = t.autodiff().into_dispatch();
    match d.kind {
        DispatchTensorKind::Autodiff(inner) => match *inner {
            DispatchTensorKind::Flex(BackendTensor::Autodiff(a)) => Some((a, d.autodiff)),
            _ => None,
        },
        _ => None,
    }
}

/// A tensor from an autodiff primitive of the CPU backend, in `context`.
pub(crate) fn from_autodiff_primitive(t: FloatTensor<Autodiff<Flex>>, context: DispatchAutodiffContext) -> Tensor<2> {
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Flex(BackendTensor::Autodiff(t)))),
        autodiff: context,
    })
}

/// The CPU primitive of a tensor without autodiff.
pub(crate) fn flex_of<const D: usize>(t: Tensor<D>) -> Option<FlexTensor> {
    match t.inner().into_dispatch().kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) => Some(f),
        _ => None,
    }
}

/// A tensor without autodiff from a CPU primitive.
pub(crate) fn plain(f: FlexTensor) -> Tensor<2> {
    plain_rank(f)
}

/// [`plain`] for any rank `D` (the primitive's shape must have `D` dimensions).
pub(crate) fn plain_rank<const D: usize>(f: FlexTensor) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor { kind: DispatchTensorKind::Flex(BackendTensor::Float(f)), autodiff: DispatchAutodiffContext::Disabled })
}
