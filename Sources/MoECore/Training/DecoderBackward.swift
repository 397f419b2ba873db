// Backward through the whole decoder for one token sequence: embedding,
// RMSNorm, rotary attention, dense or MoE feed-forward, final norm, LM head
// and cross-entropy. Gradients are added to f32 buffers shaped like the
// weights, so several sequences (micro-batches) accumulate.

#if canImport(Glibc)
import Glibc
#endif

/// Gradient buffers of a decoder, shaped like its weights.
final class DecoderGradients {
  let embedding: AlignedBuffer          // [V, H] (also the LM head's when tied)
  let lmHead: AlignedBuffer?            // [V, H] when untied
  let finalNorm: AlignedBuffer          // [H]
  struct Layer {
    var inputNorm: AlignedBuffer        // [H]
    var postNorm: AlignedBuffer         // [H]
    var qkv: AlignedBuffer              // [rows, H]
    var qkvBias: AlignedBuffer?         // [rows]
    var output: AlignedBuffer           // [H, nq d]
    var gateUp: AlignedBuffer?          // [2F, H]
    var down: AlignedBuffer?            // [H, F]
  }
  var layers: [Layer] = []

  init(model m: DecoderModel) throws {
    func zeros(_ n: Int, _ what: String) throws -> AlignedBuffer {
      let b = try AlignedBuffer(floats: n, what: what + " gradient")
      memset(b.pointer, 0, n * 4)
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
  var all: [(AlignedBuffer, Int)] {
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

  func zero() { for (b, n) in all { memset(b.pointer, 0, n * 4) } }
}

extension DecoderModel {
  /// Mean cross-entropy of predicting tokens[1...] from tokens[..<T] (one
  /// sequence, positions 0..<T, T = tokens.count - 1), scaled by `lossScale`
  /// into the gradients: d(lossScale * sum of token losses) is added to
  /// `grads` and to the MoE layers' own gradient buffers (which also receive
  /// their balance and z-loss terms). Returns the summed token loss.
  /// About how many bytes of activations one training sequence of `seqLen`
  /// tokens keeps for backward: per layer the residual stream, q/k/v, the
  /// attention output and probabilities (heads x seqLen^2) and the FFN's
  /// intermediates. Gradients are accumulated one sequence at a time, so this
  /// does not grow with the batch.
  func trainingActivationBytes(seqLen: Int) -> Double {
    let d = description
    let T = Double(seqLen), H = Double(d.hiddenSize), nq = Double(d.numHeads), hd = Double(d.headDim)
    let qkvWidth = Double(d.numHeads + 2 * d.numKVHeads) * hd
    var perToken = 6 * H + Double(32 * d.vocabSize) / max(T, 1)   // stream, norms, gradients; logits by 32-row chunks
    var probabilities = 0.0
    for (l, _) in layers.enumerated() {
      var ffn = 3 * Double(d.intermediateSize)
      if let m = d.moe, m.moeLayers.indices.contains(l), m.moeLayers[l] {
        ffn = 3 * Double(m.topK * m.expertIntermediateSize + m.sharedExpertIntermediateSize) + Double(m.numExperts)
      }
      perToken += 2 * H + qkvWidth + nq * hd + ffn
      probabilities += nq * T * T
    }
    return 4 * (T * perToken + probabilities)
  }

  func accumulateGradients(tokens: [Int32], lossScale: Float, grads: DecoderGradients) throws -> Double {
    guard weightDType == .f32 else {
      throw MoEError.unsupported("training needs f32 weights; load the model with weight dtype f32")
    }
    let d = description
    let T = tokens.count - 1
    guard T >= 1 else { throw MoEError.invalid("a training sequence needs at least 2 tokens") }
    guard T <= contextLength else { throw MoEError.invalid("sequence of \(T) tokens exceeds the context \(contextLength)") }
    for t in tokens where t < 0 || Int(t) >= d.vocabSize {
      throw MoEError.invalid("token id \(t) is outside the vocabulary (0..<\(d.vocabSize))")
    }
    Runtime.keepBLASSingleThreaded()
    rotary.ensure(T)
    let H = d.hiddenSize, hd = d.headDim, nq = d.numHeads, nkv = d.numKVHeads, V = d.vocabSize
    let qkvWidth = (nq + 2 * nkv) * hd, group = nq / nkv
    let eps = Float(d.rmsNormEps), scale = 1 / Float(hd).squareRoot()
    let L = layers.count
    func buf(_ name: String, _ n: Int) throws -> UnsafeMutablePointer<Float> { try scratch.get("train_" + name, floats: n) }

    // MARK: forward, keeping what backward needs
    let x = try buf("x", T * H)
    for t in 0..<T { embedding.row(Int(tokens[t]), into: x + t * H) }
    var saved: [(xIn: UnsafeMutablePointer<Float>, xMid: UnsafeMutablePointer<Float>, qkv: UnsafeMutablePointer<Float>,
                 probs: UnsafeMutablePointer<Float>, attn: UnsafeMutablePointer<Float>,
                 gu: UnsafeMutablePointer<Float>?, act: UnsafeMutablePointer<Float>?)] = []
    let h = try buf("h", T * H)
    let f = try buf("f", T * H)
    for (l, layer) in layers.enumerated() {
      let xIn = try buf("x_in\(l)", T * H), xMid = try buf("x_mid\(l)", T * H)
      let qkv = try buf("qkv\(l)", T * qkvWidth), probs = try buf("probs\(l)", nq * T * T)
      let attn = try buf("attn\(l)", T * nq * hd)
      xIn.update(from: x, count: T * H)
      for t in 0..<T { ModelKernels.rmsNorm(x + t * H, layer.inputNorm.pointer, h + t * H, H, eps: eps) }
      runtime.linear(h, tokens: T, layer.qkv, qkv, scratch: workerScratch, scratchFloats: workerScratchFloats)
      for t in 0..<T {
        rotary.withRow(t) { c, s in
          for head in 0..<(nq + nkv) { ModelKernels.rope(qkv + t * qkvWidth + head * hd, hd, cos: c, sin: s) }
        }
      }
      // Attention with the probabilities kept: probs[head][t][j], j <= t.
      runtime.parallelFor(nq, inlineBelow: 2, costPerItem: T * T * hd) { heads in
        for head in heads {
          let kvHead = head / group
          for t in 0..<T {
            let p = probs + (head * T + t) * T
            let q = qkv + t * qkvWidth + head * hd
            var m = -Float.infinity
            for j in 0...t {
              p[j] = dot(q, qkv + j * qkvWidth + (nq + kvHead) * hd, hd) * scale
              m = max(m, p[j])
            }
            var sum: Float = 0
            for j in 0...t { p[j] = expf(p[j] - m); sum += p[j] }
            let out = attn + t * nq * hd + head * hd
            out.update(repeating: 0, count: hd)
            for j in 0...t {
              p[j] /= sum
              axpy(p[j], qkv + j * qkvWidth + (nq + nkv + kvHead) * hd, out, hd)
            }
          }
        }
      }
      runtime.linear(attn, tokens: T, layer.output, f, scratch: workerScratch, scratchFloats: workerScratchFloats)
      for i in 0..<(T * H) { x[i] += f[i] }
      xMid.update(from: x, count: T * H)
      for t in 0..<T { ModelKernels.rmsNorm(x + t * H, layer.postNorm.pointer, h + t * H, H, eps: eps) }
      var gu: UnsafeMutablePointer<Float>? = nil, act: UnsafeMutablePointer<Float>? = nil
      if let moe = layer.moe {
        try moe.forward(x: h, tokens: T, out: f, save: true, training: true)
      } else if let gateUp = layer.gateUp, let down = layer.down {
        let F = gateUp.rows / 2
        let g = try buf("gu\(l)", T * 2 * F), a = try buf("act\(l)", T * F)
        runtime.linear(h, tokens: T, gateUp, g, scratch: workerScratch, scratchFloats: workerScratchFloats)
        for t in 0..<T { swigluForward(gate: g + t * 2 * F, up: g + t * 2 * F + F, out: a + t * F, count: F) }
        runtime.linear(a, tokens: T, down, f, scratch: workerScratch, scratchFloats: workerScratchFloats)
        gu = g
        act = a
      }
      for i in 0..<(T * H) { x[i] += f[i] }
      saved.append((xIn, xMid, qkv, probs, attn, gu, act))
    }
    let hFinal = try buf("h_final", T * H)
    for t in 0..<T { ModelKernels.rmsNorm(x + t * H, finalNorm.pointer, hFinal + t * H, H, eps: eps) }

    // MARK: loss and LM head backward, in row chunks
    let dx = try buf("dx", T * H)           // gradient of the residual stream
    let dh = try buf("dh", T * H)
    memset(dh, 0, T * H * 4)
    let chunk = 32
    let logits = try buf("logits", chunk * V)
    let lmGrad = grads.lmHead ?? grads.embedding
    var lossSum: Double = 0
    var r0 = 0
    while r0 < T {
      let r1 = min(T, r0 + chunk), n = r1 - r0
      self.logits(hidden: hFinal, rows: r0..<r1, into: logits)
      for i in 0..<n {
        let row = logits + i * V
        let target = Int(tokens[r0 + i + 1])
        let lse = logSumExp(row, V)
        lossSum += Double(lse - row[target])
        for v in 0..<V { row[v] = expf(row[v] - lse) * lossScale }
        row[target] -= lossScale
      }
      // dW_lm += dlogits^T h;  dh = dlogits W_lm
      Self.addWeightGradient(runtime, dY: logits, x: hFinal + r0 * H, tokens: n, rows: V, cols: H, into: lmGrad)
      Self.addInputGradient(runtime, dY: logits, w: lmHead, tokens: n, into: dh + r0 * H)
      r0 = r1
    }
    // Final norm backward.
    memset(dx, 0, T * H * 4)
    for t in 0..<T {
      Self.rmsNormBackward(x + t * H, finalNorm.pointer, dh + t * H, dx + t * H, grads.finalNorm.pointer, H, eps: eps)
    }

    // MARK: layers, last to first
    let dqkv = try buf("dqkv", T * qkvWidth)
    let dattn = try buf("dattn", T * nq * hd)
    for l in stride(from: L - 1, through: 0, by: -1) {
      let layer = layers[l], s = saved[l], g = grads.layers[l]
      // Feed-forward: x_out = x_mid + FFN(rms(x_mid)).
      for t in 0..<T { ModelKernels.rmsNorm(s.xMid + t * H, layer.postNorm.pointer, h + t * H, H, eps: eps) }
      if let moe = layer.moe {
        try moe.backward(gradOut: dx, gradX: dh)
      } else if let gateUp = layer.gateUp, let down = layer.down, let gu = s.gu, let act = s.act, let gGU = g.gateUp,
                let gDown = g.down {
        let F = gateUp.rows / 2
        Self.addWeightGradient(runtime, dY: dx, x: act, tokens: T, rows: H, cols: F, into: gDown)
        let dact = try buf("dact", T * F)
        memset(dact, 0, T * F * 4)
        memset(dh, 0, T * H * 4)
        Self.addInputGradient(runtime, dY: dx, w: down, tokens: T, into: dact)
        for t in 0..<T { swigluBackward(gate: gu + t * 2 * F, up: gu + t * 2 * F + F, gradOut: dact + t * F, count: F) }
        Self.addWeightGradient(runtime, dY: gu, x: h, tokens: T, rows: 2 * F, cols: H, into: gGU)
        Self.addInputGradient(runtime, dY: gu, w: gateUp, tokens: T, into: dh)
      }
      for t in 0..<T {
        Self.rmsNormBackward(s.xMid + t * H, layer.postNorm.pointer, dh + t * H, dx + t * H, g.postNorm.pointer, H, eps: eps)
      }
      // Attention: x_mid = x_in + O(attn(rope(qkv(rms(x_in))))).
      Self.addWeightGradient(runtime, dY: dx, x: s.attn, tokens: T, rows: H, cols: nq * hd, into: g.output)
      memset(dattn, 0, T * nq * hd * 4)
      Self.addInputGradient(runtime, dY: dx, w: layer.output, tokens: T, into: dattn)
      memset(dqkv, 0, T * qkvWidth * 4)
      // dq per query head; dk and dv summed over the heads of a group, so
      // the heads of one KV group run on one worker.
      runtime.parallelFor(nkv, inlineBelow: 2, costPerItem: group * T * T * hd) { kvHeads in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: T) { rowBuffer in
        let workerRow = rowBuffer.baseAddress!
        for kvHead in kvHeads {
          for head in (kvHead * group)..<((kvHead + 1) * group) {
            for t in 0..<T {
              let p = s.probs + (head * T + t) * T
              let dout = dattn + t * nq * hd + head * hd
              // dP = dOut . v_j ; dS = P * (dP - sum(P * dP))
              var inner: Float = 0
              for j in 0...t {
                let dp = dot(dout, s.qkv + j * qkvWidth + (nq + nkv + kvHead) * hd, hd)
                workerRow[j] = dp
                inner += p[j] * dp
              }
              let dq = dqkv + t * qkvWidth + head * hd
              for j in 0...t {
                let ds = p[j] * (workerRow[j] - inner) * scale
                axpy(ds, s.qkv + j * qkvWidth + (nq + kvHead) * hd, dq, hd)
                axpy(ds, s.qkv + t * qkvWidth + head * hd, dqkv + j * qkvWidth + (nq + kvHead) * hd, hd)
                axpy(p[j], dout, dqkv + j * qkvWidth + (nq + nkv + kvHead) * hd, hd)
              }
            }
          }
        }
        }
      }
      // RoPE backward (the transpose rotation) on dq and dk.
      for t in 0..<T {
        rotary.withRow(t) { c, sn in
          for head in 0..<(nq + nkv) { Self.ropeBackward(dqkv + t * qkvWidth + head * hd, hd, cos: c, sin: sn) }
        }
      }
      for t in 0..<T { ModelKernels.rmsNorm(s.xIn + t * H, layer.inputNorm.pointer, h + t * H, H, eps: eps) }
      Self.addWeightGradient(runtime, dY: dqkv, x: h, tokens: T, rows: qkvWidth, cols: H, into: g.qkv)
      if let gb = g.qkvBias { for t in 0..<T { axpy(1, dqkv + t * qkvWidth, gb.pointer, qkvWidth) } }
      memset(dh, 0, T * H * 4)
      Self.addInputGradient(runtime, dY: dqkv, w: layer.qkv, tokens: T, into: dh)
      for t in 0..<T {
        Self.rmsNormBackward(s.xIn + t * H, layer.inputNorm.pointer, dh + t * H, dx + t * H, g.inputNorm.pointer, H, eps: eps)
      }
    }
    // Embedding rows.
    for t in 0..<T { axpy(1, dx + t * H, grads.embedding.pointer + Int(tokens[t]) * H, H) }
    return lossSum
  }

  /// dW[rows, cols] += dY[T, rows]^T x[T, cols], rows split over the workers.
  static func addWeightGradient(_ runtime: Runtime, dY: UnsafePointer<Float>, x: UnsafePointer<Float>, tokens T: Int,
                                rows: Int, cols: Int, into dW: AlignedBuffer) {
    runtime.pool.run { w in
      let r = runtime.unitRange(rows, worker: w), lo = r.lowerBound, hi = r.upperBound
      guard hi > lo else { return }
      GEMM.atB(n: T, m: hi - lo, cols: cols, a: dY + lo, lda: rows, b: x, ldb: cols, c: dW.pointer + lo * cols, ldc: cols)
    }
  }

  /// dX[T, cols] += dY[T, rows] w[rows, cols], columns split over the workers.
  static func addInputGradient(_ runtime: Runtime, dY: UnsafePointer<Float>, w: DenseWeight, tokens T: Int,
                               into dX: UnsafeMutablePointer<Float>) {
    let matrix = w.matrix
    runtime.pool.run { worker in
      let r = runtime.unitRange(w.cols, worker: worker), lo = r.lowerBound, hi = r.upperBound
      guard hi > lo else { return }
      GEMM.aW(n: T, cols: hi - lo, k: w.rows, a: dY, lda: w.rows, w: matrix.offset(row: 0, col: lo), c: dX + lo,
              ldc: w.cols, accumulate: true)
    }
  }

  /// y = x * r * w with r = 1/sqrt(mean(x^2) + eps): dx += r * (g - x * r^2 * mean(g * x)), g = w * dy;
  /// dw += dy * x * r.
  static func rmsNormBackward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                              _ dx: UnsafeMutablePointer<Float>, _ dw: UnsafeMutablePointer<Float>, _ n: Int, eps: Float) {
    let r = 1 / (dot(x, x, n) / Float(n) + eps).squareRoot()
    var gx: Float = 0
    for i in 0..<n { gx += w[i] * dy[i] * x[i] }
    let c = r * r * gx / Float(n)
    for i in 0..<n {
      dx[i] += r * (w[i] * dy[i] - x[i] * c)
      dw[i] += dy[i] * x[i] * r
    }
  }

  /// The transpose of ModelKernels.rope, on a gradient.
  static func ropeBackward(_ g: UnsafeMutablePointer<Float>, _ d: Int, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
    let half = d / 2
    for i in 0..<half {
      let a = g[i], b = g[i + half]
      g[i] = a * cos[i] + b * sin[i]
      g[i + half] = b * cos[i] - a * sin[i]
    }
  }
}
