// The decoder block, forward and backward side by side: inference (over the
// KV cache) and training (over a batch of fresh sequences, keeping what
// backward needs) run the same forward; each primitive's backward sits next to
// what it inverts. Every row-wise step splits rows over the workers and every
// reduction over rows runs in row order, so results are bit-identical for a
// given thread count, however the rows are split.

import MoESupport
import MoERuntime
import MoELayer
#if canImport(Glibc)
import Glibc
#endif
import MoEKernelCode
import MoEFormats

/// The rows of one decoder pass: `sequences` sequences of `length` tokens,
/// one after another, at positions start ..< start + length. Inference runs
/// one sequence over the KV cache (start = the positions already cached);
/// training runs several fresh ones (start 0) whose keys and values stay in
/// the pass's own q/k/v rows.
package struct TokenBatch {
  package let sequences: Int
  package let length: Int
  package let start: Int
  /// Keys and values go to (and are read from) the KV cache: one sequence only.
  let cached: Bool
  /// Precision of the batch's weight products (projections, dense and expert
  /// FFNs, LM head); attention's score and value products stay f32.
  package var compute: ComputePrecision = .f32
  package var rows: Int { sequences * length }
}

/// Sees a dense FFN layer's input and activations in an inference forward.
package protocol FFNObserver: AnyObject {
  /// routerInput: [rows, H] the normed hidden state entering the FFN;
  /// activations: [rows, F] silu(gate) * up.
  func observe(layer: Int, routerInput: UnsafePointer<Float>, activations: UnsafePointer<Float>,
               rows: Int, hidden: Int, intermediate: Int)
}

/// What one layer's training forward keeps for its backward.
package struct LayerActivations {
  var xIn: UnsafeMutablePointer<Float>          // [rows, H] the block's input
  var xMid: UnsafeMutablePointer<Float>         // [rows, H] after attention's residual add
  package var qkv: UnsafeMutablePointer<Float>          // [rows, (nq + 2 nkv) d] after RoPE
  package var attn: UnsafeMutablePointer<Float>         // [rows, nq d] attention output
  package var lse: UnsafeMutablePointer<Float>          // [sequences, nq, length] attention log-sum-exp
  package var gateUp: UnsafeMutablePointer<Float>?      // dense FFN [rows, 2F]
  package var act: UnsafeMutablePointer<Float>?         // dense FFN [rows, F]
}

extension DecoderModel {
  // MARK: - forward

  /// One decoder layer on the residual stream x [rows, H], in place:
  /// x += attention(rmsNorm(x)); x += FFN(rmsNorm(x)). A cached batch (one
  /// sequence) appends its keys and values to the KV cache. `training` applies
  /// MoE router jitter; otherwise MoE router statistics are counted. With
  /// `keep` the activations backward needs are written there and MoE layers
  /// save their state for backward.
  func layerForward(_ l: Int, x: UnsafeMutablePointer<Float>, batch: TokenBatch, training: Bool,
                    keep: LayerActivations?, buffers: ScratchSet) throws {
    let d = description, layer = layers[l]
    let T = batch.rows, H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads
    let qkvWidth = (nq + 2 * nkv) * hd, kvWidth = nkv * hd
    let eps = Float(d.rmsNormEps)
    let h = try buffers.get("h", floats: T * H)
    let f = try buffers.get("f", floats: T * H)
    let qkv = try keep?.qkv ?? buffers.get("qkv", floats: T * qkvWidth)
    let attn = try keep?.attn ?? buffers.get("attn", floats: T * nq * hd)
    if let keep { keep.xIn.update(from: x, count: T * H) }

    rmsNormRows(x, layer.inputNorm.pointer, h, rows: T, eps: eps)
    runtime.linear(h, tokens: T, layer.qkv, qkv, scratch: workerScratch, scratchFloats: workerScratchFloats,
                   compute: batch.compute)
    // Rotary embeddings on q and k; at inference k and v go into the cache.
    let cached = batch.cached, start = batch.start, length = batch.length
    let cacheType = cached ? kvCacheDType : .f32
    let keys = cached ? UnsafeMutableRawPointer(keyCache[l].pointer) : UnsafeMutableRawPointer(qkv + nq * hd)
    let values = cached ? UnsafeMutableRawPointer(valueCache[l].pointer) : UnsafeMutableRawPointer(qkv + (nq + nkv) * hd)
    runtime.parallelFor(T, costPerItem: qkvWidth) { r in
      for t in r {
        let row = qkv + t * qkvWidth, p = start + t % length
        self.rotary.withRow(p) { c, s in
          for head in 0..<(nq + nkv) { ModelKernels.rope(row + head * hd, hd, cos: c, sin: s) }
        }
        if cached {
          Self.storeCacheRow(row + nq * hd, into: keys, position: p, width: kvWidth, type: cacheType)
          Self.storeCacheRow(row + (nq + nkv) * hd, into: values, position: p, width: kvWidth, type: cacheType)
        }
      }
    }
    // Decode reads a bf16 cache as it is. A longer call attends over f32 rows:
    // the earlier positions widened from the cache, its own tokens' keys and
    // values exact (so a prompt's logits do not depend on the cache's type).
    var attendKeys = UnsafeRawPointer(keys), attendValues = UnsafeRawPointer(values), kvType = cacheType
    if cacheType == .bf16 && T >= blockedAttentionMinTokens {
      let k32 = try buffers.get("keys f32", floats: (start + T) * kvWidth)
      let v32 = try buffers.get("values f32", floats: (start + T) * kvWidth)
      widenBF16(keys.assumingMemoryBound(to: UInt16.self), k32, count: start * kvWidth)
      widenBF16(values.assumingMemoryBound(to: UInt16.self), v32, count: start * kvWidth)
      for t in 0..<T {
        (k32 + (start + t) * kvWidth).update(from: qkv + t * qkvWidth + nq * hd, count: kvWidth)
        (v32 + (start + t) * kvWidth).update(from: qkv + t * qkvWidth + (nq + nkv) * hd, count: kvWidth)
      }
      attendKeys = UnsafeRawPointer(k32)
      attendValues = UnsafeRawPointer(v32)
      kvType = .f32
    }
    try runtime.causalAttention(q: qkv, ldq: qkvWidth, keys: attendKeys, values: attendValues, kvType: kvType,
                                kvStride: cached ? kvWidth : qkvWidth, out: attn, ldo: nq * hd,
                                tokens: length, start: start, sequences: batch.sequences, heads: nq, kvHeads: nkv,
                                headDim: hd, lse: keep?.lse, scratch: buffers)
    runtime.linear(attn, tokens: T, layer.output, f, scratch: workerScratch, scratchFloats: workerScratchFloats,
                   compute: batch.compute)
    runtime.parallelFor(T, costPerItem: 2 * H) { r in
      for t in r {
        axpy(1, f + t * H, x + t * H, H)
        ModelKernels.rmsNorm(x + t * H, layer.postNorm.pointer, h + t * H, H, eps: eps)
      }
    }
    if let keep { keep.xMid.update(from: x, count: T * H) }

    if let moe = layer.moe {
      try moe.forward(x: h, tokens: T, out: f, save: keep != nil, training: training, compute: batch.compute)
      if !training {
        let stats = moe.stats
        for e in stats.tokensPerExpert.indices { routerCounts[l][e] += stats.tokensPerExpert[e] }
        routerBalanceSum += Double(stats.losses.balance)
        routerForwards += 1
      }
    } else if let gateUp = layer.gateUp, let down = layer.down {
      let F = gateUp.rows / 2
      let gu = try keep?.gateUp ?? buffers.get("gate_up", floats: T * 2 * F)
      let act = try keep?.act ?? buffers.get("act", floats: T * F)
      runtime.linear(h, tokens: T, gateUp, gu, scratch: workerScratch, scratchFloats: workerScratchFloats,
                   compute: batch.compute)
      runtime.parallelFor(T, costPerItem: F) { r in
        for t in r { swigluForward(gate: gu + t * 2 * F, up: gu + t * 2 * F + F, out: act + t * F, count: F) }
      }
      if !training, let observer = ffnObserver {
        observer.observe(layer: l, routerInput: h, activations: act, rows: T, hidden: H, intermediate: F)
      }
      runtime.linear(act, tokens: T, down, f, scratch: workerScratch, scratchFloats: workerScratchFloats,
                   compute: batch.compute)
    }
    runtime.parallelFor(T, costPerItem: H) { r in
      for t in r { axpy(1, f + t * H, x + t * H, H) }
    }
  }

  /// Writes one position's keys or values (`width` floats) into row `position`
  /// of a KV cache of `type` (f32, or bf16 rounded to nearest even).
  static func storeCacheRow(_ src: UnsafePointer<Float>, into cache: UnsafeMutableRawPointer, position: Int,
                            width: Int, type: DType) {
    if type == .bf16 {
      let dst = cache.assumingMemoryBound(to: UInt16.self) + position * width
      for i in 0..<width { dst[i] = floatToBF16(src[i]) }
    } else {
      (cache.assumingMemoryBound(to: Float.self) + position * width).update(from: src, count: width)
    }
  }

  /// out[t] = rmsNorm(x[t]) * weight for rows 0 ..< rows.
  func rmsNormRows(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                   rows T: Int, eps: Float) {
    let H = description.hiddenSize
    runtime.parallelFor(T, costPerItem: H) { r in
      for t in r { ModelKernels.rmsNorm(x + t * H, weight, out + t * H, H, eps: eps) }
    }
  }

  // MARK: - backward

  /// Backward of layerForward from the activations it kept: dx [rows, H]
  /// holds dL/d(layer output) and becomes dL/d(layer input) (left as is past
  /// the attention when `inputGradient` is false: nothing below needs it).
  /// Weight gradients go to `grads` (nil when the layer's dense weights are
  /// frozen) and to the MoE layer's own buffers (its experts' only with
  /// `expertGradients`).
  func layerBackward(_ l: Int, dx: UnsafeMutablePointer<Float>, batch: TokenBatch, saved s: LayerActivations,
                     grads g: DecoderGradients.Layer?, expertGradients: Bool = true, inputGradient: Bool,
                     buffers: ScratchSet) throws {
    let d = description, layer = layers[l]
    let T = batch.rows, H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads
    let qkvWidth = (nq + 2 * nkv) * hd
    let eps = Float(d.rmsNormEps)
    let h = try buffers.get("h", floats: T * H)
    let dh = try buffers.get("dh", floats: T * H)
    let inv = try buffers.get("norm_inverse", floats: T)

    // Feed-forward: x_out = x_mid + FFN(rmsNorm(x_mid)).
    if let moe = layer.moe {
      try moe.backward(gradOut: dx, gradX: dh, expertWeights: expertGradients, compute: batch.compute)
    } else if let gateUp = layer.gateUp, let down = layer.down, let gu = s.gateUp, let act = s.act {
      let F = gateUp.rows / 2
      if let gd = g?.down {
        runtime.weightGradient(dY: dx, x: act, tokens: T, rows: H, cols: F, into: gd.pointer, compute: batch.compute)
      }
      let dact = try buffers.get("dact", floats: T * F)
      runtime.inputGradient(dY: dx, w: down, tokens: T, into: dact, accumulate: false, compute: batch.compute)
      runtime.parallelFor(T, costPerItem: F) { r in
        for t in r { swigluBackward(gate: gu + t * 2 * F, up: gu + t * 2 * F + F, gradOut: dact + t * F, count: F) }
      }
      if let ggu = g?.gateUp {
        rmsNormRows(s.xMid, layer.postNorm.pointer, h, rows: T, eps: eps)
        runtime.weightGradient(dY: gu, x: h, tokens: T, rows: 2 * F, cols: H, into: ggu.pointer,
                               compute: batch.compute)
      }
      runtime.inputGradient(dY: gu, w: gateUp, tokens: T, into: dh, accumulate: false, compute: batch.compute)
    }
    rmsNormBackward(x: s.xMid, weight: layer.postNorm.pointer, dy: dh, dx: dx, dWeight: g?.postNorm.pointer,
                    rows: T, eps: eps, inverse: inv)

    // Attention: x_mid = x_in + O(attention(rope(qkv(rmsNorm(x_in))))).
    guard g != nil || inputGradient else { return }
    let dattn = try buffers.get("dattn", floats: T * nq * hd)
    let dqkv = try buffers.get("dqkv", floats: T * qkvWidth)
    if let go = g?.output {
      runtime.weightGradient(dY: dx, x: s.attn, tokens: T, rows: H, cols: nq * hd, into: go.pointer,
                             compute: batch.compute)
    }
    runtime.inputGradient(dY: dx, w: layer.output, tokens: T, into: dattn, accumulate: false, compute: batch.compute)
    memset(dqkv, 0, T * qkvWidth * 4)
    try runtime.causalAttentionBackward(qkv: s.qkv, ld: qkvWidth, out: s.attn, dOut: dattn, lse: s.lse, dqkv: dqkv,
                                        tokens: batch.length, sequences: batch.sequences, heads: nq, kvHeads: nkv,
                                        headDim: hd, scratch: buffers)
    let start = batch.start, length = batch.length
    runtime.parallelFor(T, costPerItem: qkvWidth) { r in
      for t in r {
        self.rotary.withRow(start + t % length) { c, sn in
          for head in 0..<(nq + nkv) { ModelKernels.ropeBackward(dqkv + t * qkvWidth + head * hd, hd, cos: c, sin: sn) }
        }
      }
    }
    if let gq = g?.qkv {
      rmsNormRows(s.xIn, layer.inputNorm.pointer, h, rows: T, eps: eps)
      runtime.weightGradient(dY: dqkv, x: h, tokens: T, rows: qkvWidth, cols: H, into: gq.pointer,
                             compute: batch.compute)
    }
    if let gb = g?.qkvBias { runtime.columnSums(dqkv, rows: T, cols: qkvWidth, into: gb.pointer) }
    runtime.inputGradient(dY: dqkv, w: layer.qkv, tokens: T, into: dh, accumulate: false, compute: batch.compute)
    rmsNormBackward(x: s.xIn, weight: layer.inputNorm.pointer, dy: dh, dx: dx, dWeight: g?.inputNorm.pointer,
                    rows: T, eps: eps, inverse: inv)
  }

  /// Backward of rmsNormRows: y = x * r * w with r = 1/sqrt(mean(x^2) + eps).
  /// dx[t] += r (w dy - x r^2 mean(w dy x)); dWeight (if given) += sum over
  /// rows, in row order, of dy x r. `inverse`: scratch [rows].
  package func rmsNormBackward(x: UnsafePointer<Float>, weight w: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                               dx: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>?, rows T: Int, eps: Float,
                               inverse: UnsafeMutablePointer<Float>) {
    let H = description.hiddenSize
    runtime.parallelFor(T, costPerItem: 3 * H) { rows in
      for t in rows {
        ModelKernels.rmsNormBackward(x + t * H, w, dy + t * H, dx + t * H, H, eps: eps, inverse: inverse + t)
      }
    }
    guard let dWeight else { return }
    runtime.parallelFor((H + 15) / 16, costPerItem: 16 * T) { units in
      let lo = units.lowerBound * 16, hi = min(H, units.upperBound * 16)
      for t in 0..<T {
        let r = inverse[t], xr = x + t * H, dr = dy + t * H
        for i in lo..<hi { dWeight[i] += dr[i] * xr[i] * r }
      }
    }
  }

  // MARK: - LM head and cross-entropy

  /// Rows of logits the LM head computes at once (about 64 MiB of them, 16 to 256 rows).
  var lossChunkRows: Int { max(16, min(256, (1 << 24) / max(vocabSize, 1))) }

  /// Cross-entropy of predicting targets[t] from hidden row t (after the final
  /// norm), t in 0 ..< rows; per-row losses go to `losses` [rows] (NaN where a
  /// row's logits are not finite). With `dHidden`, writes there
  /// d(lossScale * sum of losses)/d hidden and adds the LM head's weight
  /// gradient to `headGradient` when given. `compute`: the LM head products' precision.
  package func crossEntropy(hidden: UnsafePointer<Float>, rows T: Int, targets: UnsafePointer<Int32>, lossScale: Float,
                            losses: UnsafeMutablePointer<Float>, dHidden: UnsafeMutablePointer<Float>?,
                            headGradient: UnsafeMutablePointer<Float>?, compute: ComputePrecision = .f32,
                            buffers: ScratchSet) throws {
    let V = vocabSize, H = description.hiddenSize, chunk = lossChunkRows
    let logits = try buffers.get("logits", floats: min(chunk, T) * V)
    var r0 = 0
    while r0 < T {
      let r1 = min(T, r0 + chunk), n = r1 - r0
      self.logits(hidden: hidden, rows: r0..<r1, into: logits, compute: compute, callTokens: T)
      let gradient = dHidden != nil
      runtime.parallelFor(n, costPerItem: 2 * V) { rows in
        for i in rows {
          let row = logits + i * V, target = Int(targets[r0 + i])
          let lse = logSumExp(row, V)
          losses[r0 + i] = lse - row[target]
          if gradient {
            // dlogits = (softmax - onehot) * lossScale
            let l = Vec16(repeating: lse), sv = Vec16(repeating: lossScale)
            var v = 0
            while v + 16 <= V {
              store16(exp16(load16(row + v) - l) * sv, row + v)
              v += 16
            }
            while v < V {
              row[v] = expf(row[v] - lse) * lossScale
              v += 1
            }
            row[target] -= lossScale
          }
        }
      }
      if let dHidden {
        if let headGradient {
          runtime.weightGradient(dY: logits, x: hidden + r0 * H, tokens: n, rows: V, cols: H, into: headGradient,
                                 compute: compute)
        }
        runtime.inputGradient(dY: logits, w: lmHead, tokens: n, into: dHidden + r0 * H, accumulate: false,
                              compute: compute)
      }
      r0 = r1
    }
  }
}

extension ModelKernels {
  /// Backward of rmsNorm for one row (dx += …); writes r = 1/sqrt(mean(x^2) + eps) to inverse[0].
  package static func rmsNormBackward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                                      _ dx: UnsafeMutablePointer<Float>, _ n: Int, eps: Float,
                                      inverse: UnsafeMutablePointer<Float>) {
    let r = 1 / (dot(x, x, n) / Float(n) + eps).squareRoot()
    inverse[0] = r
    let c = r * r * dot(w, dy, x, n) / Float(n)
    for i in 0..<n { dx[i] += r * (w[i] * dy[i] - x[i] * c) }
  }

  /// The transpose of rope, on a gradient.
  package static func ropeBackward(_ g: UnsafeMutablePointer<Float>, _ d: Int, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
    let half = d / 2
    for i in 0..<half {
      let a = g[i], b = g[i + half]
      g[i] = a * cos[i] + b * sin[i]
      g[i + half] = b * cos[i] - a * sin[i]
    }
  }
}

extension Runtime {
  /// dW[rows, cols] += dY[T, rows]^T x[T, cols], the larger of dW's rows and
  /// columns split over the workers (the rows when there are as many; see
  /// splitsRows for why the larger).
  func weightGradient(dY: UnsafePointer<Float>, x: UnsafePointer<Float>, tokens T: Int, rows: Int, cols: Int,
                      into dW: UnsafeMutablePointer<Float>, compute: ComputePrecision = .f32) {
    let byRows = rows >= cols
    pool.run { w in
      let (rs, cs) = self.share(rows: rows, cols: cols, byRows: byRows, worker: w)
      guard !rs.isEmpty, !cs.isEmpty else { return }
      GEMM.atB(n: T, m: rs.count, cols: cs.count, a: dY + rs.lowerBound, lda: rows, b: x + cs.lowerBound, ldb: cols,
               c: dW + rs.lowerBound * cols + cs.lowerBound, ldc: cols, compute: compute)
    }
  }

  /// dX[T, w.cols] (+)= dY[T, w.rows] w, split over the workers by columns of
  /// dX, or by tokens where there are more tokens than columns (splitsRows).
  func inputGradient(dY: UnsafePointer<Float>, w: DenseWeight, tokens T: Int, into dX: UnsafeMutablePointer<Float>,
                     accumulate: Bool, compute: ComputePrecision = .f32) {
    let matrix = w.matrix
    let byTokens = !matrix.dtype.isQuantized && splitsRows(rows: T, cols: w.cols)
    pool.run { worker in
      let (tokens, cols) = self.share(rows: T, cols: w.cols, byRows: byTokens, worker: worker)
      let t0 = tokens.lowerBound, c0 = cols.lowerBound
      guard !tokens.isEmpty, !cols.isEmpty else { return }
      GEMM.aW(n: tokens.count, cols: cols.count, k: w.rows, a: dY + t0 * w.rows, lda: w.rows,
              w: matrix.offset(row: 0, col: c0), c: dX + t0 * w.cols + c0, ldc: w.cols, accumulate: accumulate,
              compute: compute)
    }
  }

  /// sums[c] += sum over rows, in row order, of m[row, c]; columns split over the workers.
  func columnSums(_ m: UnsafePointer<Float>, rows T: Int, cols: Int, into sums: UnsafeMutablePointer<Float>) {
    parallelFor((cols + 15) / 16, costPerItem: 16 * T) { units in
      let lo = units.lowerBound * 16, hi = min(cols, units.upperBound * 16)
      for t in 0..<T {
        let row = m + t * cols
        for c in lo..<hi { sums[c] += row[c] }
      }
    }
  }
}
