// A training pass over a batch of sequences: the decoder block's forward
// keeping what backward needs (or, with recompute, only each block's input),
// the LM head's cross-entropy, then each block's backward from the last to the
// lowest one that has anything to train. Gradients are added to f32 buffers
// shaped like the weights, so micro-batches accumulate.

import MoESupport
import MoERuntime
#if canImport(Glibc)
import Glibc
#endif
import MoEKernelCode
import MoEFormats
import MoELayer

/// Gradient buffers of a decoder, shaped like its weights.
package final class DecoderGradients {
  package let embedding: AlignedBuffer          // [V, H] (also the LM head's when tied)
  package let lmHead: AlignedBuffer?            // [V, H] when untied
  package let finalNorm: AlignedBuffer          // [H]
  package struct Layer {
    package var inputNorm: AlignedBuffer        // [H]
    package var postNorm: AlignedBuffer         // [H]
    package var qkv: AlignedBuffer              // [rows, H]
    package var qkvBias: AlignedBuffer?         // [rows]
    package var output: AlignedBuffer           // [H, nq d]
    package var gateUp: AlignedBuffer?          // [2F, H]
    package var down: AlignedBuffer?            // [H, F]
  }
  package var layers: [Layer] = []

  package init(model m: DecoderModel) throws {
    func zeros(_ n: Int, _ what: String) throws -> AlignedBuffer {
      let b = try AlignedBuffer(floats: n, what: what + " gradient")
      m.runtime.zero(b.pointer, floats: n)
      return b
    }
    let H = m.description.hiddenSize
    embedding = try zeros(m.embedding.rows * H, "embedding")
    lmHead = m.lmHead === m.embedding ? nil : try zeros(m.lmHead.rows * H, "lm_head")
    finalNorm = try zeros(H, "final norm")
    for l in m.layers {
      layers.append(Layer(inputNorm: try zeros(H, "input norm"), postNorm: try zeros(H, "post norm"),
                          qkv: try zeros(l.qkv.rows * l.qkv.cols, "qkv"),
                          qkvBias: l.qkv.bias == nil ? nil : try zeros(l.qkv.rows, "qkv bias"),
                          output: try zeros(l.output.rows * l.output.cols, "o_proj"),
                          gateUp: try l.gateUp.map { try zeros($0.rows * $0.cols, "gate/up") },
                          down: try l.down.map { try zeros($0.rows * $0.cols, "down") }))
    }
  }

  /// Every buffer with its element count, in a fixed order.
  package var all: [(AlignedBuffer, Int)] {
    var out: [(AlignedBuffer, Int)] = [(embedding, embedding.floats), (finalNorm, finalNorm.floats)]
    if let lmHead { out.append((lmHead, lmHead.floats)) }
    for l in layers {
      out += [(l.inputNorm, l.inputNorm.floats), (l.postNorm, l.postNorm.floats), (l.qkv, l.qkv.floats),
              (l.output, l.output.floats)]
      if let b = l.qkvBias { out.append((b, b.floats)) }
      if let g = l.gateUp { out.append((g, g.floats)) }
      if let d = l.down { out.append((d, d.floats)) }
    }
    return out
  }

  package func zero() { for (b, n) in all { memset(b.pointer, 0, n * 4) } }
}

extension DecoderModel {
  /// Bytes the training passes' buffers hold: the decoder's and the MoE
  /// layers' saved state and work buffers (their inference buffers excluded).
  var trainingBuffersBytes: Int {
    var sets: [ScratchSet] = []
    for l in layers { if let s = l.moe?.scratch, !sets.contains(where: { $0 === s }) { sets.append(s) } }
    return trainScratch.bytes() + sets.reduce(0) { $0 + $1.bytes { !$0.hasPrefix("inference_") } }
  }

  /// Bytes of activations and work buffers a training pass over `sequences`
  /// sequences of `seqLen` tokens holds: per block (from `lowestLayer` up) its
  /// input, or with `recompute` only that and one block's worth; the MoE
  /// layers' saved routing and rows (with `recompute` one layer's: they share
  /// their buffers); the LM head's logits of one chunk.
  package func trainingActivationBytes(sequences: Int, seqLen: Int, recompute: Bool, lowestLayer: Int = 0) -> Double {
    let d = description
    let T = Double(sequences * seqLen), H = Double(d.hiddenSize), hd = Double(d.headDim)
    let nq = Double(d.numHeads), qkvWidth = Double(d.numHeads + 2 * d.numKVHeads) * hd
    func kept(_ l: Int) -> Double {
      var floats = T * (2 * H + qkvWidth + 2 * nq * hd + nq)   // x_in, x_mid, qkv, attention out and lse
      if layers[l].moe == nil { floats += T * 3 * Double(d.intermediateSize) }
      return floats
    }
    func moeSaved(_ l: Int) -> Double {
      guard let m = d.moe, l < layers.count, layers[l].moe != nil else { return 0 }
      let rows = T * Double(m.topK), shared = Double(m.sharedExpertIntermediateSize)
      // gathered rows, outputs, gate/up/activation per row, router logits
      return rows * (2 * H + 3 * Double(m.expertIntermediateSize)) + T * (3 * shared + 2 * H + 2 * Double(m.numExperts))
    }
    let trained = lowestLayer..<layers.count
    var floats = 0.0
    if recompute {
      floats += Double(trained.count) * T * H + (trained.map(kept).max() ?? 0)
    } else {
      floats += trained.reduce(0) { $0 + kept($1) }
    }
    // With recompute the MoE layers share one set of buffers (one layer's saved forward).
    floats += recompute ? (trained.map(moeSaved).max() ?? 0) : trained.reduce(0) { $0 + moeSaved($1) }
    // Residual stream, its gradient, work buffers of one block, the final hidden rows and logits.
    let widest = max(qkvWidth, 2 * Double(d.intermediateSize))
    floats += T * (6 * H + 2 * widest) + Double(min(lossChunkRows, sequences * seqLen)) * Double(d.vocabSize)
    return 4 * floats
  }

  /// One training pass over `sequences` sequences laid out one after another
  /// in `tokens` (each seqLen + 1 tokens; sequence s predicts its tokens 1...
  /// from the ones before), scaled by `lossScale` into the gradients:
  /// d(lossScale * summed token loss) is added to `grads` (nil: the dense
  /// weights are frozen and get none) and to the MoE layers' own gradient
  /// buffers (which also receive their balance and z-loss terms; the experts'
  /// weights get none when `expertGradients` is false). `compute`: the weight
  /// products' precision (bf16: mixed precision). Blocks below
  /// `lowestLayer` run forward only. Returns the summed token loss.
  package func accumulateGradients(tokens: [Int32], sequences B: Int, lossScale: Float, grads: DecoderGradients?,
                                   expertGradients: Bool = true, compute: ComputePrecision = .f32, recompute: Bool = false,
                                   lowestLayer: Int = 0) throws -> Double {
    guard matricesAreF32 else {
      throw MoEError.unsupported("training needs f32 weights; load the model with weight dtype f32")
    }
    let d = description
    guard B >= 1, tokens.count % B == 0 else {
      throw MoEError.invalid("\(tokens.count) tokens do not split into \(B) sequences of equal length")
    }
    let S = tokens.count / B - 1
    guard S >= 1 else { throw MoEError.invalid("a training sequence needs at least 2 tokens") }
    guard S <= contextLength else { throw MoEError.invalid("sequence of \(S) tokens exceeds the context \(contextLength)") }
    for t in tokens where t < 0 || Int(t) >= d.vocabSize {
      throw MoEError.invalid("token id \(t) is outside the vocabulary (0..<\(d.vocabSize))")
    }
    guard lowestLayer >= 0, lowestLayer <= layers.count else {
      throw MoEError.invalid("lowest trained layer \(lowestLayer) is outside 0...\(layers.count)")
    }
    Runtime.keepBLASSingleThreaded()
    rotary.ensure(S)
    let H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads, L = layers.count
    let qkvWidth = (nq + 2 * nkv) * hd, T = B * S
    let eps = Float(d.rmsNormEps)
    let buffers = trainScratch
    // With recompute only the layer in backward needs its saved forward: the
    // MoE layers share one set of buffers (and release their own).
    for l in layers { l.moe?.useScratch(recompute ? sharedMoEScratch : nil) }
    if !recompute { sharedMoEScratch.release() }
    let batch = TokenBatch(sequences: B, length: S, start: 0, cached: false, compute: compute)
    var inputs = [Int32](repeating: 0, count: T), targets = [Int32](repeating: 0, count: T)
    for s in 0..<B {
      for t in 0..<S {
        inputs[s * S + t] = tokens[s * (S + 1) + t]
        targets[s * S + t] = tokens[s * (S + 1) + t + 1]
      }
    }
    /// Layer l's kept activations: its own buffers, or with recompute its own
    /// input and one block's buffers shared by every layer; dense-FFN buffers
    /// only for a dense layer.
    func layerActivations(_ l: Int) throws -> LayerActivations {
      let tag = recompute ? "block_" : "layer\(l)_"
      func buf(_ name: String, _ n: Int) throws -> UnsafeMutablePointer<Float> { try buffers.get(tag + name, floats: n) }
      let F = d.intermediateSize, dense = layers[l].moe == nil
      return LayerActivations(xIn: try buffers.get("layer\(l)_x_in", floats: T * H), xMid: try buf("x_mid", T * H),
                              qkv: try buf("qkv", T * qkvWidth), attn: try buf("attn", T * nq * hd),
                              lse: try buf("lse", T * nq),
                              gateUp: dense ? try buf("gate_up", T * 2 * F) : nil, act: dense ? try buf("act", T * F) : nil)
    }

    // MARK: forward, keeping what backward needs
    let x = try buffers.get("x", floats: T * H)
    for t in 0..<T { embedding.row(Int(inputs[t]), into: x + t * H) }
    var noiseSteps = [UInt64](repeating: 0, count: L)
    for l in 0..<L {
      noiseSteps[l] = layers[l].moe?.noiseStep ?? 0
      let keep = l >= lowestLayer ? try layerActivations(l) : nil
      try layerForward(l, x: x, batch: batch, training: true, keep: keep, buffers: buffers)
    }
    let hidden = try buffers.get("final_hidden", floats: T * H)
    rmsNormRows(x, finalNorm.pointer, hidden, rows: T, eps: eps)

    // MARK: loss, LM head and final norm backward
    let losses = try buffers.get("losses", floats: T)
    let dh = try buffers.get("d_final_hidden", floats: T * H)
    try targets.withUnsafeBufferPointer { tp in
      try crossEntropy(hidden: hidden, rows: T, targets: tp.baseAddress!, lossScale: lossScale, losses: losses,
                       dHidden: dh, headGradient: (grads?.lmHead ?? grads?.embedding)?.pointer, compute: compute,
                       buffers: buffers)
    }
    var lossSum: Double = 0
    for t in 0..<T { lossSum += Double(losses[t]) }
    let dx = try buffers.get("dx", floats: T * H)
    memset(dx, 0, T * H * 4)
    rmsNormBackward(x: x, weight: finalNorm.pointer, dy: dh, dx: dx, dWeight: grads?.finalNorm.pointer, rows: T,
                    eps: eps, inverse: try buffers.get("norm_inverse", floats: T))

    // MARK: blocks, last to lowest
    for l in stride(from: L - 1, through: lowestLayer, by: -1) {
      let saved = try layerActivations(l)
      if recompute {
        let xr = try buffers.get("x_recompute", floats: T * H)
        xr.update(from: saved.xIn, count: T * H)
        let advanced = layers[l].moe?.noiseStep
        layers[l].moe?.noiseStep = noiseSteps[l]
        try layerForward(l, x: xr, batch: batch, training: true, keep: saved, buffers: buffers)
        if let advanced { layers[l].moe?.noiseStep = advanced }
      }
      try layerBackward(l, dx: dx, batch: batch, saved: saved, grads: grads?.layers[l],
                        expertGradients: expertGradients, inputGradient: l > lowestLayer || grads != nil, buffers: buffers)
    }
    // Embedding rows, in token order.
    if let grads, lowestLayer == 0 {
      for t in 0..<T { axpy(1, dx + t * H, grads.embedding.pointer + Int(inputs[t]) * H, H) }
    }
    return lossSum
  }
}
