// Model FLOPs of training, counted the way the literature counts them for
// model FLOPs utilization (MFU): from the model's shapes, not from what the
// kernels happen to do.

extension DecoderModel {
  /// Weights one token multiplies in a forward pass: every matrix it goes
  /// through. That is the attention projections (q, k, v, o), per layer either
  /// the dense SwiGLU FFN (gate, up, down) or, in an MoE layer, the router
  /// (E x H), `top_k` routed experts (3 x H x F each), and the shared expert
  /// (3 x H x F_shared) with its [H] gate when there is one, and the LM head
  /// (V x H, also when tied to the embedding). The embedding lookup multiplies
  /// nothing, and norms and biases add or scale rather than multiply a matrix,
  /// so none of them counts. Expert choice counts `top_k` as the average
  /// experts per token, and a capacity limit that drops tokens does not lower
  /// the count.
  public var multipliedParametersPerToken: Int {
    var total = lmHead.rows * lmHead.cols
    for l in layers {
      total += l.qkv.rows * l.qkv.cols + l.output.rows * l.output.cols
      if let up = l.gateUp, let down = l.down {
        total += up.rows * up.cols + down.rows * down.cols
      }
      if let m = l.moe {
        let c = m.config
        total += c.experts * c.hidden + c.topK * 3 * c.hidden * c.ffn
        if c.sharedFFN > 0 { total += 3 * c.hidden * c.sharedFFN + c.hidden }
      }
    }
    return total
  }

  /// Model FLOPs of training on one token of a `seqLen`-token sequence
  /// (forward, backward and nothing else: the optimizer update is not counted).
  ///
  /// The PaLM convention (Chowdhery et al. 2022, appendix B), which Chinchilla
  /// and most MFU figures use: 6 x N, with N = `multipliedParametersPerToken`
  /// (2 FLOPs per multiply-add forward, 4 backward for the input and the weight
  /// gradients), plus the attention products 12 x L x H x Q x T: the scores
  /// Q.K^T and the weighted sum of V each take 2 x T x (H x Q) FLOPs per token
  /// forward, three times that with backward, over the full T x T square
  /// (L layers, H query heads of width Q, T = `seqLen`). A causal
  /// implementation computes about half of that square, so its real work is a
  /// little below this count; the count, like PaLM's, does not depend on the
  /// implementation. Frozen weights (train-only runs) still count: the figure
  /// is that of training the whole model.
  public func trainingFLOPsPerToken(seqLen: Int) -> Double {
    let d = description
    let attention = 12 * Double(layers.count) * Double(d.numHeads * d.headDim) * Double(max(seqLen, 0))
    return 6 * Double(multipliedParametersPerToken) + attention
  }
}
