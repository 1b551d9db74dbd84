//! RoBERTa's embeddings (word + position + token type, LayerNorm, dropout) as one node of the
//! autograd graph, whose backward pass hands its five parameters' gradients to the model's
//! [`GradSink`](super::roberta::GradSink).
//!
//! Composed of candle's ops, the sum was two row gathers and two additions, one of them a
//! broadcast, each a pass over the (tokens, hidden) activations; backwards, candle zeroed and
//! added a gradient for every intermediate result and summed the broadcast's columns: about
//! 1.5 ms of run 7's 36 ms kernel sum at the paper's size (benches/gpu/NOTES.md). Here the sum
//! is one pass (`kernels.cu`'s `embed_sum`, on the CPU its twin), with the token-type row folded
//! into the position table first (a table of max_len rows, not one per token); the backward pass
//! is dropout's, LayerNorm's, and two scatters of the sum's gradient into the tables.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::attached::attach3;
use super::fused::{data, elems, last_dim, layer_norm, layer_norm_backward};
use super::gpu_ops::{column_sums, scatter_rows};
use super::layers::dropout_with_seed;
use super::roberta::{Config, Params};

/// The parameters' names.
const WORD: &str = "roberta.embeddings.word_embeddings.weight";
const POSITION: &str = "roberta.embeddings.position_embeddings.weight";
const TOKEN_TYPE: &str = "roberta.embeddings.token_type_embeddings.weight";
const NORM_WEIGHT: &str = "roberta.embeddings.LayerNorm.weight";
const NORM_BIAS: &str = "roberta.embeddings.LayerNorm.bias";

/// The embeddings (tokens, hidden) of `ids` at `positions` (one each per token), with inverted
/// dropout at `dropout`'s (rate, seed) where there is one: for trainable weights one node whose
/// backward pass hands its parameters' gradients to `p.sink`; for frozen weights the same
/// forward pass, recording nothing. An id or position past its table is an error naming it.
pub fn embeddings(
    p: &Params,
    cfg: &Config,
    ids: &[u32],
    positions: &[u32],
    dropout: Option<(f32, u64)>,
) -> Result<Tensor> {
    let param = |name: &str| {
        p.tensor(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("the model has no `{name}`")))
    };
    let (word, position, token_type) = (param(WORD)?, param(POSITION)?, param(TOKEN_TYPE)?);
    let (norm_w, norm_b) = (param(NORM_WEIGHT)?.detach(), param(NORM_BIAS)?.detach());
    let (vocab, places) = (word.dim(0)?, position.dim(0)?);
    check_ids("token id", ids, vocab)?;
    check_ids("position", positions, places)?;
    let device = word.device();
    let ids2 = Tensor::from_vec([ids, positions].concat(), (2, ids.len()), device)?;
    let pos_type = position
        .detach()
        .broadcast_add(&token_type.detach().get(0)?)?;
    let sum = embed_sum(&word.detach(), &pos_type, &ids2)?;
    let eps = cfg.layer_norm_eps;
    let normed = layer_norm(&sum, &norm_w, &norm_b, eps)?;
    let out = match dropout {
        Some((rate, seed)) => dropout_with_seed(&normed, rate, seed)?,
        None => normed,
    };
    if p.frozen {
        return Ok(out);
    }
    let sink = p.sink.clone();
    attach3(
        [&word, &position, &token_type],
        out,
        move |grad: &Tensor| {
            let g = match dropout {
                Some((rate, seed)) => dropout_with_seed(grad, rate, seed)?,
                None => grad.clone(),
            };
            let [dsum, dw, db] = layer_norm_backward(&sum, &norm_w, &g, eps)?;
            sink.add(NORM_WEIGHT, dw)?;
            sink.add(NORM_BIAS, db)?;
            sink.add(WORD, scatter_rows(&dsum, &ids2.get(0)?, vocab)?)?;
            let dpos = scatter_rows(&dsum, &ids2.get(1)?, places)?;
            sink.add(TOKEN_TYPE, column_sums(&dpos)?.unsqueeze(0)?)?;
            sink.add(POSITION, dpos)?;
            Ok([None, None, None])
        },
    )
}

fn check_ids(what: &str, ids: &[u32], rows: usize) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= rows) {
        Some(k) => candle_core::bail!(
            "the embeddings: {what} {} (token {k}) is past a table of {rows} rows",
            ids[k]
        ),
        None => Ok(()),
    }
}

/// word[ids[i]] + pos_type[positions[i]] for each token: (tokens, hidden) f32, recording nothing.
/// `ids2` (2, tokens) u32 holds the ids, then the positions.
fn embed_sum(word: &Tensor, pos_type: &Tensor, ids2: &Tensor) -> Result<Tensor> {
    word.contiguous()?
        .apply_op3_no_bwd(&pos_type.contiguous()?, &ids2.contiguous()?, &EmbedSum)
}

struct EmbedSum;

impl CustomOp3 for EmbedSum {
    fn name(&self) -> &'static str {
        "flora-embed-sum"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let word = data(s1, l1, self.name())?;
        let pos_type = data(s2, l2, self.name())?;
        let ids2 = elems::<u32>(s3, l3, self.name())?;
        let n = last_dim(l1);
        let tokens = ids2.len() / 2;
        let (ids, positions) = ids2.split_at(tokens);
        let mut x = vec![0f32; tokens * n];
        x.par_chunks_mut(n)
            .zip(ids.par_iter().zip(positions))
            .for_each(|(x, (&id, &pos))| {
                let a = &word[id as usize * n..(id as usize + 1) * n];
                let b = &pos_type[pos as usize * n..(pos as usize + 1) * n];
                for ((x, a), b) in x.iter_mut().zip(a).zip(b) {
                    *x = a + b;
                }
            });
        Ok((CpuStorage::F32(x), Shape::from((tokens, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::fused_cuda::embed_sum((s1, l1), (s2, l2), (s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::roberta::Positions;
    use candle_core::Device;

    #[test]
    fn an_id_past_the_vocabulary_is_named() {
        let cfg = Config::new(30, 1, 16, 2, 32, 12, 0.0, Positions::Roberta);
        let p = Params::init(&cfg, 1, &Device::Cpu).unwrap();
        let e = embeddings(&p, &cfg, &[5, 31, 6], &[2, 3, 4], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("token id 31 (token 1) is past a table of 30 rows"),
            "{e}"
        );
    }

    #[test]
    fn the_sum_is_the_gathered_rows_added() {
        let word = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
        let pos = Tensor::new(&[[10f32, 20.], [30., 40.]], &Device::Cpu).unwrap();
        let ids2 = Tensor::new(&[[2u32, 0, 2], [1, 0, 0]], &Device::Cpu).unwrap();
        let x: Vec<Vec<f32>> = embed_sum(&word, &pos, &ids2).unwrap().to_vec2().unwrap();
        assert_eq!(x, vec![vec![35., 46.], vec![11., 22.], vec![15., 26.]]);
    }
}
