//! BERT's encoder, forward only, on the CPU: embeddings, then per layer
//! self-attention and a feed-forward block, each followed by a residual
//! LayerNorm (post-norm, as in the original BERT and its MiniLM/BGE/E5
//! descendants). One text at a time, so no padding and no attention mask:
//! what comes out is exactly what a batch of one gives in the reference
//! implementation.
//!
//! The dense layers go through `kernel::linear` (weights read as stored);
//! attention's small products through `matrixmultiply`'s SGEMM; everything
//! else is plain loops over row-major `f32` buffers.

use super::kernel::Weights;
use super::safetensors::{SafeTensors, Tensor};

/// The parts of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: String,
    #[serde(default = "position_embedding_type")]
    pub position_embedding_type: String,
}

fn layer_norm_eps() -> f32 {
    1e-12
}
fn hidden_act() -> String {
    "gelu".to_owned()
}
fn position_embedding_type() -> String {
    "absolute".to_owned()
}

/// A dense layer: `y = x W^T + b`, `W` as stored, `[out, in]`.
struct Linear {
    weight: Weights,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value in one product: `[3 * hidden, hidden]`.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub struct Bert {
    config: BertConfig,
    /// `[vocab, hidden]`, half floats where the kernel uses them: only the
    /// text's rows are ever read, and it is most of the model's size.
    word_embeddings: Weights,
    position_embeddings: Vec<f32>,
    /// Token type 0's row: every token of a single text has type 0.
    token_type: Vec<f32>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    vocab_size: usize,
}

impl Bert {
    /// Builds the encoder from a checkpoint's tensors (names with or
    /// without the `bert.` prefix); `Err` names what is missing or misshapen.
    pub fn load(config: BertConfig, tensors: &SafeTensors) -> Result<Self, String> {
        if config.model_type != "bert" && !config.model_type.is_empty() {
            return Err(format!(
                "config.json describes a {} model; engram runs BERT encoders",
                config.model_type
            ));
        }
        if config.hidden_act != "gelu" {
            return Err(format!(
                "config.json's activation is {}; engram's encoder has gelu",
                config.hidden_act
            ));
        }
        if config.position_embedding_type != "absolute" {
            return Err(format!(
                "config.json's position embeddings are {}; engram's encoder has absolute ones",
                config.position_embedding_type
            ));
        }
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            return Err("config.json's hidden size is not a multiple of its heads".to_owned());
        }
        let prefix = if tensors.names().any(|n| n.starts_with("bert.")) {
            "bert."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, String> {
            let full = format!("{prefix}{name}");
            let Tensor { shape: found, data } = tensors
                .get(&full)?
                .ok_or_else(|| format!("model.safetensors has no tensor {full}"))?;
            if found != shape {
                return Err(format!(
                    "tensor {full} is {found:?}, the config says {shape:?}"
                ));
            }
            Ok(data)
        };
        let linear = |name: &str, outputs: usize, inputs: usize| -> Result<Linear, String> {
            Ok(Linear {
                weight: Weights::new(get(&format!("{name}.weight"), &[outputs, inputs])?),
                bias: get(&format!("{name}.bias"), &[outputs])?,
                inputs,
                outputs,
            })
        };
        let norm = |name: &str| -> Result<LayerNorm, String> {
            Ok(LayerNorm {
                gamma: get(&format!("{name}.weight"), &[hidden])?,
                beta: get(&format!("{name}.bias"), &[hidden])?,
            })
        };
        let word = tensors
            .get(&format!("{prefix}embeddings.word_embeddings.weight"))?
            .ok_or("model.safetensors has no word embeddings")?;
        if word.shape.len() != 2 || word.shape[1] != hidden {
            return Err(format!("the word embeddings are {:?}", word.shape));
        }
        let vocab_size = word.shape[0];
        let types = tensors
            .get(&format!("{prefix}embeddings.token_type_embeddings.weight"))?
            .ok_or("model.safetensors has no token type embeddings")?;
        if types.shape.len() != 2 || types.shape[1] != hidden || types.shape[0] == 0 {
            return Err(format!("the token type embeddings are {:?}", types.shape));
        }
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let at = |part: &str| format!("encoder.layer.{i}.{part}");
            let part = |name: &str, what: &str, shape: &[usize]| {
                get(&at(&format!("attention.self.{name}.{what}")), shape)
            };
            let mut weight = Vec::with_capacity(3 * hidden * hidden);
            let mut bias = Vec::with_capacity(3 * hidden);
            for name in ["query", "key", "value"] {
                weight.extend(part(name, "weight", &[hidden, hidden])?);
                bias.extend(part(name, "bias", &[hidden])?);
            }
            let qkv = Linear {
                weight: Weights::new(weight),
                bias,
                inputs: hidden,
                outputs: 3 * hidden,
            };
            layers.push(Layer {
                qkv,
                attention_out: linear(&at("attention.output.dense"), hidden, hidden)?,
                attention_norm: norm(&at("attention.output.LayerNorm"))?,
                intermediate: linear(&at("intermediate.dense"), config.intermediate_size, hidden)?,
                output: linear(&at("output.dense"), hidden, config.intermediate_size)?,
                output_norm: norm(&at("output.LayerNorm"))?,
            });
        }
        Ok(Self {
            word_embeddings: Weights::new(word.data),
            position_embeddings: get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, hidden],
            )?,
            token_type: types.data[..hidden].to_vec(),
            embeddings_norm: norm("embeddings.LayerNorm")?,
            layers,
            vocab_size,
            config,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// The most tokens a text may have (position embeddings run out after).
    pub fn max_tokens(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The last layer's hidden states, `[tokens, hidden]` row-major.
    /// Ids past the vocabulary read as id 0; callers pass what the
    /// tokenizer of the same model made, at most [`Self::max_tokens`].
    pub fn forward(&self, ids: &[u32]) -> Vec<f32> {
        let hidden = self.config.hidden_size;
        let tokens = ids.len().min(self.max_tokens());
        let mut x = vec![0f32; tokens * hidden];
        for (t, &id) in ids.iter().take(tokens).enumerate() {
            let id = if (id as usize) < self.vocab_size {
                id as usize
            } else {
                0
            };
            let position = &self.position_embeddings[t * hidden..(t + 1) * hidden];
            let row = &mut x[t * hidden..(t + 1) * hidden];
            self.word_embeddings.row(id, hidden, row);
            for j in 0..hidden {
                row[j] += position[j] + self.token_type[j];
            }
        }
        self.embeddings_norm
            .apply(&mut x, hidden, self.config.layer_norm_eps);
        let mut scratch = Scratch::default();
        for layer in &self.layers {
            self.layer(layer, &mut x, tokens, &mut scratch);
        }
        x
    }

    fn layer(&self, layer: &Layer, x: &mut [f32], tokens: usize, s: &mut Scratch) {
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head = hidden / heads;
        let eps = self.config.layer_norm_eps;

        layer
            .qkv
            .apply(x, tokens, resize(&mut s.qkv, tokens * 3 * hidden));
        let context = resize(&mut s.context, tokens * hidden);
        let scores = resize(&mut s.scores, tokens * tokens);
        let scale = 1.0 / (head as f32).sqrt();
        let stride = 3 * hidden;
        for h in 0..heads {
            let q = &s.qkv[h * head..];
            let k = &s.qkv[hidden + h * head..];
            let v = &s.qkv[2 * hidden + h * head..];
            // scores = q_h k_h^T * scale, [tokens, tokens]
            gemm(
                tokens,
                head,
                tokens,
                scale,
                q,
                (stride, 1),
                k,
                (1, stride),
                0.0,
                scores,
                (tokens, 1),
            );
            for row in scores.chunks_exact_mut(tokens) {
                softmax(row);
            }
            // context_h = scores v_h, [tokens, head], written into its columns
            gemm(
                tokens,
                tokens,
                head,
                1.0,
                scores,
                (tokens, 1),
                v,
                (stride, 1),
                0.0,
                &mut context[h * head..],
                (hidden, 1),
            );
        }
        let attended = resize(&mut s.attended, tokens * hidden);
        layer.attention_out.apply(context, tokens, attended);
        for (xi, ai) in x.iter_mut().zip(attended.iter()) {
            *xi += ai;
        }
        layer.attention_norm.apply(x, hidden, eps);

        let inner = resize(&mut s.inner, tokens * layer.intermediate.outputs);
        layer.intermediate.apply(x, tokens, inner);
        for value in inner.iter_mut() {
            *value = gelu(*value);
        }
        layer.output.apply(inner, tokens, attended);
        for (xi, oi) in x.iter_mut().zip(attended.iter()) {
            *xi += oi;
        }
        layer.output_norm.apply(x, hidden, eps);
    }
}

/// Buffers reused across layers of one forward pass.
#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
    scores: Vec<f32>,
    attended: Vec<f32>,
    inner: Vec<f32>,
}

fn resize(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

impl Linear {
    /// `out = x W^T + b` for `rows` rows of `x`.
    fn apply(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        super::kernel::linear(
            x,
            rows,
            self.inputs,
            &self.weight,
            self.outputs,
            &self.bias,
            out,
        );
    }
}

impl LayerNorm {
    fn apply(&self, x: &mut [f32], width: usize, eps: f32) {
        for row in x.chunks_exact_mut(width) {
            let n = width as f32;
            let mean = row.iter().sum::<f32>() / n;
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
            let inverse = 1.0 / (variance + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                *v = (*v - mean) * inverse * g + b;
            }
        }
    }
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// GELU as BERT defines it, with the error function (not the tanh fit).
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The error function as a rational function of `x` (odd numerator, even
/// denominator, both in `x^2`), exact to about 1e-7 in `f32`: only
/// multiplies, adds and one divide, so the loop over a layer's activations
/// vectorises (a libm call per value cost a tenth of a query). Past |x| = 4
/// erf is 1 to within `f32`'s precision.
fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ];
    const BETA: [f32; 5] = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329e-3,
        -1.426_474e-2,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = ALPHA[1..].iter().fold(ALPHA[0], |p, a| p * x2 + a) * x;
    let q = BETA[1..].iter().fold(BETA[0], |q, b| q * x2 + b);
    p / q
}

/// `c = alpha * a b + beta * c` with `a` `[m, k]`, `b` `[k, n]`, `c` `[m, n]`,
/// each given as a slice and its (row, column) strides in elements.
///
/// Panics unless every element the strides reach lies inside its slice,
/// which is what makes the raw-pointer call below sound.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    beta: f32,
    c: &mut [f32],
    c_strides: (usize, usize),
) {
    let last = |rows: usize, cols: usize, (rs, cs): (usize, usize)| {
        (rows.saturating_sub(1)) * rs + (cols.saturating_sub(1)) * cs
    };
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        k == 0 || last(m, k, a_strides) < a.len(),
        "gemm: a too short"
    );
    assert!(
        k == 0 || last(k, n, b_strides) < b.len(),
        "gemm: b too short"
    );
    assert!(last(m, n, c_strides) < c.len(), "gemm: c too short");
    let s = |v: usize| v as isize;
    // SAFETY: the asserts above keep every index the strides reach inside
    // the slices; `c` is borrowed mutably, so it overlaps neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            s(a_strides.0),
            s(a_strides.1),
            b.as_ptr(),
            s(b_strides.0),
            s(b_strides.1),
            beta,
            c.as_mut_ptr(),
            s(c_strides.0),
            s(c_strides.1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_follows_the_strides() {
        // a = [[1, 2], [3, 4]]; b given transposed by its strides: b = [[5, 7], [6, 8]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b_stored = [5.0, 6.0, 7.0, 8.0];
        let mut c = [1.0; 4];
        gemm(
            2,
            2,
            2,
            1.0,
            &a,
            (2, 1),
            &b_stored,
            (1, 2),
            1.0,
            &mut c,
            (2, 1),
        );
        assert_eq!(c, [1.0 + 17.0, 1.0 + 23.0, 1.0 + 39.0, 1.0 + 53.0]);
    }

    #[test]
    fn erf_matches_libm_everywhere() {
        let mut worst = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 2e-6, "erf is off by {worst}");
    }

    #[test]
    fn gelu_and_softmax_match_their_definitions() {
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu(-3.0) + 0.004_049_7).abs() < 1e-6);
        let mut row = [1.0, 2.0, 3.0];
        softmax(&mut row);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((row[2] - 0.665_240_9).abs() < 1e-6);
    }
}
