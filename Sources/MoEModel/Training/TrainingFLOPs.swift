// Model FLOPs of training, counted the way the literature counts them for
// model FLOPs utilization (MFU): from the model's shapes, not from what the
// kernels happen to do, so a description (without weights) is enough.

import MoEFormats

extension ModelDescription {
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
    let H = hiddenSize
    var total = vocabSize * H
    for l in 0..<numLayers {
      total += (numHeads + 2 * numKVHeads) * headDim * H + H * numHeads * headDim
      if let m = moe, m.moeLayers[l] {
        total += m.numExperts * H + m.topK * 3 * H * m.expertIntermediateSize
        if m.sharedExpertIntermediateSize > 0 { total += 3 * H * m.sharedExpertIntermediateSize + H }
      } else {
        total += 3 * H * intermediateSize
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
    let attention = 12 * Double(numLayers) * Double(numHeads * headDim) * Double(max(seqLen, 0))
    return 6 * Double(multipliedParametersPerToken) + attention
  }
}

extension DecoderModel {
  /// The model's `ModelDescription.multipliedParametersPerToken`.
  public var multipliedParametersPerToken: Int { description.multipliedParametersPerToken }

  /// The model's `ModelDescription.trainingFLOPsPerToken(seqLen:)`.
  public func trainingFLOPsPerToken(seqLen: Int) -> Double { description.trainingFLOPsPerToken(seqLen: seqLen) }
}
