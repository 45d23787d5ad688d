//! Writes the version-1 model-file fixtures of `tests/fixtures/v1/` with the model-file code of
//! format version 1 (positional tensor names), together with the log-densities, samples and
//! forward maps those models give, so that later versions of the library can prove that old files
//! keep their exact behaviour.
//!
//! `cargo run --release --example write_fixtures_v1 -- crates/diffeo/tests/fixtures/v1`
//!
//! Run once, at the commit that added it; the files it wrote are committed, and this program is
//! kept only as the record of how they were made.

use std::collections::BTreeMap;

use diffeo::bijections::*;
use diffeo::distributions::BaseConfig;
use diffeo::flow::{nsf, nsf_coupling, EmbeddingConfig, Flow, FlowConfig, MafConfig, RealNvpConfig, Standardization};
use diffeo::nn::Activation;
use diffeo::prelude::*;
use diffeo::tensor::{matrix, to_vec};
use diffeo::testing::randomize_parameters;
use rand::Rng;
use rand_distr::StandardNormal;
use serde_json::json;

fn normal(n: usize, d: usize, scale: f64, offset: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..n * d).map(|_| offset + scale * rng.sample::<f64, _>(StandardNormal)).collect()
}

fn main() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crates/diffeo/tests/fixtures/v1".into()));
    std::fs::create_dir_all(&out)?;
    let device = diffeo::cpu();
    let mut cases: Vec<(&str, FlowConfig, &str)> = Vec::new();

    cases.push(("maf", MafConfig::new(3).with_transforms(2).with_hidden(vec![8, 8]).with_seed(1).flow_config(), "density"));
    cases.push(("nsf", nsf(3, 2, vec![8]).with_seed(2).flow_config(), "density"));
    cases.push((
        "realnvp_bn_resblocks",
        RealNvpConfig::new(3)
            .with_transforms(3)
            .with_hidden(vec![8])
            .with_batch_norm(true)
            .with_random_permutations(true)
            .with_residual_blocks(1)
            .with_dropout(0.1)
            .with_activation(Activation::Elu)
            .with_seed(3)
            .flow_config(),
        "density",
    ));
    cases.push(("nice", RealNvpConfig::new(4).with_transforms(2).with_hidden(vec![8]).with_additive(true).with_seed(4).flow_config(), "density"));
    let mut conditional = MafConfig::new(2)
        .with_transforms(2)
        .with_hidden(vec![8])
        .with_context_dim(2)
        .with_embedding(Some(EmbeddingConfig { hidden: vec![4], output_dim: 3, activation: Activation::Tanh }))
        .with_base(BaseConfig::DiagNormal)
        .with_residual_blocks(1)
        .with_seed(5)
        .flow_config();
    conditional.context_standardization = Some(Standardization { mean: vec![1.0, -2.0], std: vec![0.5, 3.0] });
    cases.push(("maf_conditional_embedding", conditional, "density"));
    cases.push((
        "iaf_mixture",
        MafConfig::new(3).with_transforms(2).with_hidden(vec![8]).with_iaf(true).with_random_orders(true).with_base(BaseConfig::GaussianMixture { components: 3 }).with_seed(6).flow_config(),
        "density",
    ));
    cases.push(("nsf_coupling_student", nsf_coupling(2, 2, vec![8]).with_base(BaseConfig::StudentT { df: 5.0 }).with_seed(7).flow_config(), "density"));
    let nsf_ctx = nsf(2, 2, vec![8]).with_context_dim(1).with_seed(8).flow_config();
    cases.push(("nsf_conditional", nsf_ctx, "density"));
    // Forward-only layers: compared through the forward map.
    let d = 3;
    let forward_only = FlowConfig::new(
        d,
        vec![
            LayerConfig::ElementwiseAffine { dim: d },
            LayerConfig::Planar(PlanarConfig { dim: d }),
            LayerConfig::Radial(RadialConfig { dim: d }),
            LayerConfig::Sylvester(SylvesterConfig { dim: d, hidden: 2, basis: SylvesterBasis::Orthogonal }),
            LayerConfig::Sylvester(SylvesterConfig { dim: d, hidden: d, basis: SylvesterBasis::Householder { reflections: 2 } }),
            LayerConfig::Householder(HouseholderConfig { dim: d, reflections: 2 }),
            LayerConfig::Elementwise { dim: d, kind: ElementwiseKind::Box { low: vec![-4.0; d], high: vec![4.0, 5.0, 6.0] } },
        ],
    )
    .with_seed(9);
    cases.push(("residual_forward_only", forward_only, "forward"));
    // Elementwise maps, LU, permutations, a stored standardization and logit preprocessing.
    let elementwise = FlowConfig::new(
        2,
        vec![
            LayerConfig::LuLinear(LuLinearConfig { dim: 2, perm: vec![1, 0] }),
            LayerConfig::Permutation { perm: vec![1, 0] },
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Softplus },
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Exp }.inverted(),
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Tanh },
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Affine { shift: vec![0.5, 0.5], scale: vec![0.4, 0.4] } },
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Sigmoid }.inverted(),
            LayerConfig::Elementwise { dim: 2, kind: ElementwiseKind::Affine { shift: vec![-0.1, 0.2], scale: vec![2.0, 0.5] } },
        ],
    )
    .with_seed(10);
    cases.push(("elementwise_lu", elementwise, "density"));

    let mut expected = serde_json::Map::new();
    for (k, (name, config, kind)) in cases.into_iter().enumerate() {
        let flow: Flow = config.try_init(&device)?;
        let flow = randomize_parameters(flow, 100 + k as u64, 0.3);
        let mut rng = StdRng::seed_from_u64(1000 + k as u64);
        let (dim, cdim) = (flow.dim(), flow.context_dim());
        let n = 6;
        let context = (cdim > 0).then(|| normal(n, cdim, 1.0, 0.0, &mut rng));
        let ct = context.as_ref().map(|c| matrix(c.clone(), n, cdim, &device));
        let mut case = serde_json::Map::new();
        case.insert("kind".into(), json!(kind));
        case.insert("context".into(), json!(context));
        if kind == "density" {
            // Points where the density is positive: samples of the model itself.
            let x = flow.sample(1, ct.as_ref(), &mut rng)?;
            let x = if cdim > 0 { x } else { flow.sample(n, None, &mut rng)? };
            let lp = to_vec(flow.log_prob(x.clone(), ct.as_ref())?)?;
            case.insert("x".into(), json!(to_vec(x)?));
            case.insert("log_prob".into(), json!(lp));
            let mut srng = StdRng::seed_from_u64(77);
            let (s, sl) = flow.sample_and_log_prob(if cdim > 0 { 2 } else { n }, ct.as_ref(), &mut srng)?;
            case.insert("sample_seed".into(), json!(77));
            case.insert("samples".into(), json!(to_vec(s)?));
            case.insert("sample_log_prob".into(), json!(to_vec(sl)?));
        } else {
            let u = normal(n, dim, 1.0, 0.0, &mut rng);
            let (y, ld) = flow.from_base(matrix(u.clone(), n, dim, &device), ct.as_ref())?;
            case.insert("u".into(), json!(u));
            case.insert("forward".into(), json!(to_vec(y)?));
            case.insert("forward_log_det".into(), json!(to_vec(ld)?));
        }
        let mut extra = BTreeMap::new();
        extra.insert("fixture".to_string(), name.to_string());
        diffeo::io::save(&flow, out.join(format!("{name}.dfo")), &extra)?;
        expected.insert(name.to_string(), serde_json::Value::Object(case));
    }
    std::fs::write(out.join("expected.json"), serde_json::to_string_pretty(&serde_json::Value::Object(expected))?)?;
    println!("wrote {}", out.display());
    Ok(())
}
