// Forward and backward of MoELayer, phase by phase. Each phase splits its
// work with a fixed partition that depends only on the worker count and the
// number of rows per expert, and every sum runs in a fixed order, so results
// are bit-identical for a given thread count.
//
// Element-wise work rides on the matrix products (GEMM.xWtPair, aW and xWt with
// an epilogue): SwiGLU forward on each finished strip of g and u, its gradient
// on each finished strip of da, and (in inference) the routing weights on each
// finished strip of y, while those strips are still in cache.
//
// With config.compute == .bf16 the expert products (phases 1 and 2, B1 and B2)
// round their operands to bf16 and sum in f32 (PackedGEMM.swift); the router,
// routing, SwiGLU, combine and every sum between products stay f32.

import MoESupport
import MoERuntime
#if canImport(Glibc)
import Glibc
#endif
import MoEKernelCode
import MoEFormats

/// A contiguous range of one slice's columns given to one worker.
package struct WorkItem: Equatable {
  package var slice: Int
  package var range: Range<Int>
}

/// Where expert e's rows and activations live for one call.
package struct RowLayout {
  var rowStart: [Int]   // [E (+1)]
  var rowCount: [Int]
  package var g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>, a: UnsafeMutablePointer<Float>
  var gs: UnsafeMutablePointer<Float>, us: UnsafeMutablePointer<Float>, as_: UnsafeMutablePointer<Float>
  package var experts: Int, ffn: Int, sharedFFN: Int

  /// Activation pointers of expert e (its first row) and their leading dimension.
  @inlinable @inline(always)
  package func activations(_ e: Int) -> (g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>,
                                 a: UnsafeMutablePointer<Float>, ld: Int) {
    if e < experts {
      let off = rowStart[e] * ffn
      return (g + off, u + off, a + off, ffn)
    }
    return (gs, us, as_, sharedFFN)
  }
}

/// The row-space buffers of one call (shared by forward and the backward that follows it).
package struct RowBuffers {
  package var xp: UnsafeMutablePointer<Float>        // [Rt, H] token rows in expert order
  package var y: UnsafeMutablePointer<Float>         // [Rt, H] expert outputs
  package var layout: RowLayout
  package var partial: [UnsafeMutablePointer<Float>] // per shard [Rt, H] when experts are split
  var sharedGateValues: UnsafeMutablePointer<Float> // [T]
}

extension MoELayer {
  /// The row layout of `routing` and its named buffers, from `buffer(name, floats)`.
  func rowBuffers(routing: RoutingPlan, tokens T: Int,
                  _ buffer: (String, Int) throws -> UnsafeMutablePointer<Float>) throws -> RowBuffers {
    let E = config.experts, H = config.hidden, F = config.ffn, Fs = config.sharedFFN
    let R = routing.rows
    let Rt = R + (Fs > 0 ? T : 0)
    var rowStart = (0..<E).map { routing.expertOffsets[$0] }
    var rowCount = (0..<E).map { routing.rowsOf(expert: $0) }
    if Fs > 0 { rowStart.append(R); rowCount.append(T) }
    let layout = RowLayout(rowStart: rowStart, rowCount: rowCount,
                           g: try buffer("g", R * F), u: try buffer("u", R * F), a: try buffer("a", R * F),
                           gs: try buffer("gs", T * Fs), us: try buffer("us", T * Fs), as_: try buffer("as", T * Fs),
                           experts: E, ffn: F, sharedFFN: Fs)
    return RowBuffers(xp: try buffer("x_rows", Rt * H), y: try buffer("y", Rt * H), layout: layout,
                      partial: try (0..<(plan.splitsExperts ? plan.shards.count : 0)).map { try buffer("y_shard\($0)", Rt * H) },
                      sharedGateValues: try buffer("shared_gate", T))
  }
}

extension MoELayer {
  /// Largest token count of one call.
  public static let maxTokens = 1 << 24

  // MARK: - Forward

  /// out[T, H] = MoE(x[T, H]). With `save`, keeps what backward needs; with
  /// `training`, applies router jitter (when configured) with the current noise
  /// step and advances it. `compute` overrides the configured precision of
  /// the expert products for this call (a model trained in bf16).
  public func forward(x: UnsafePointer<Float>, tokens T: Int, out: UnsafeMutablePointer<Float>,
                      save: Bool, training: Bool, compute precision: ComputePrecision? = nil) throws {
    guard T >= 0, T <= Self.maxTokens else {
      throw MoEError.invalid("tokens is \(T); it must be in 0...\(Self.maxTokens)")
    }
    Runtime.keepBLASSingleThreaded()
    // A saving forward replaces the saved state; any other forward uses its
    // own buffers and leaves the saved state for backward.
    if save { saved = nil }
    lastRouting = nil
    let buffer: (String, Int) throws -> UnsafeMutablePointer<Float> = { [scratch] name, floats in
      try scratch.get(save ? name : "inference_" + name, floats: floats)
    }
    let E = config.experts, H = config.hidden, Fs = config.sharedFFN
    let shared = Fs > 0
    // Precision of the expert products (the router's stays f32).
    let compute = precision ?? config.expertCompute
    // Quantized experts take one path for the whole call, chosen by its
    // tokens (as the dense quantized products do): integer dot products for
    // few, blocks of rows dequantized to f32 for more.
    let quantTokens: Int? = config.storage.isQuantized ? T : nil

    // Router input, jittered in training.
    let jittered = training && config.jitter > 0 && T > 0
    var routerInput = x
    if jittered {
      let noise = try buffer("jitter", T * H)
      let xj = try buffer("x_router", T * H)
      var rng = Rng(seed: config.seed, stream: [0x6A69_7474_6572, noiseStep])
      let eps = Double(config.jitter)
      for i in 0..<(T * H) {
        noise[i] = Float(1 + eps * (2 * rng.uniform() - 1))
        xj[i] = x[i] * noise[i]
      }
      routerInput = UnsafePointer(xj)
    }
    if training && config.jitter > 0 { noiseStep &+= 1 }
    if save {
      let xs = try buffer("x_saved", T * H)
      xs.update(from: x, count: T * H)
    }

    // Router logits [T, E].
    let logits = try buffer("logits", T * E)
    let routerW = WeightMatrix(base: UnsafeRawPointer(router.pointer), dtype: .f32, ld: H)
    runtime.parallelFor(T, inlineBelow: 1 << 16, costPerItem: E * H) { r in
      GEMM.xWt(n: r.count, rows: E, k: H, x: routerInput + r.lowerBound * H, ldx: H, w: routerW,
               c: logits + r.lowerBound * E, ldc: E, accumulate: false, scratch: logits, scratchFloats: 0)
    }

    // Routing (caller thread: O(T * E)).
    let routing = Routing.route(logits: logits, tokens: T, config: config.routingConfig)
    let R = routing.rows
    let Rt = R + (shared ? T : 0)
    let rows = try rowBuffers(routing: routing, tokens: T, buffer)
    let xp = rows.xp, y = rows.y, layout = rows.layout, partial = rows.partial
    let sharedGateValues = rows.sharedGateValues
    let split = !partial.isEmpty

    // Gather token rows in expert order (and every token once more for the shared expert).
    runtime.parallelFor(Rt, costPerItem: H) { rows in
      for r in rows {
        let t = r < R ? Int(routing.rowToken[r]) : r - R
        (xp + r * H).update(from: x + t * H, count: H)
      }
    }

    // Phase 1: g = x Wg^T and u = x Wu^T per slice column block, as one blocked
    // product (x packed once); a = silu(g) * u on each finished strip while g
    // and u are in cache.
    let gateUp = shardWork(layout: layout, length: { $0.ffn.count }, unitCost: { _ in H })
    runPhase(gateUp) { s, view, range, w in
      let e = view.expert, n = layout.rowCount[e]
      let act = layout.activations(e)
      let f0 = view.ffn.lowerBound + range.lowerBound, ld = act.ld
      let g = act.g + f0, u = act.u + f0, a = act.a + f0
      GEMM.xWtPair(n: n, rows: range.count, k: H, x: xp + layout.rowStart[e] * H, ldx: H,
                   w1: view.gate.offset(row: range.lowerBound, col: 0), c1: g,
                   w2: view.up.offset(row: range.lowerBound, col: 0), c2: u, ldc: ld,
                   scratch: self.workerScratch[w].pointer, scratchFloats: self.workerScratchFloats,
                   compute: compute, callTokens: quantTokens) { r0, rows, c0, cols in
        for i in r0..<(r0 + rows) {
          let o = i * ld + c0
          swigluForward(gate: g + o, up: u + o, out: a + o, count: cols)
        }
      }
    }

    // Phase 2: y = a Wd^T per slice and block of output columns. Without
    // `save` (backward needs the unweighted y) and when each expert's rows
    // have one writer, each finished strip of a routed expert's rows is
    // scaled by the rows' routing weights, so the combine only adds.
    let weighted = !save && !split
    let downWork = shardWork(layout: layout, length: { _ in H }, unitCost: { $0.ffn.count })
    routing.rowWeight.withUnsafeBufferPointer { rowWeight in
      runPhase(downWork) { s, view, range, w in
        let e = view.expert, n = layout.rowCount[e]
        let act = layout.activations(e)
        let target = (split ? partial[s] : y) + layout.rowStart[e] * H + range.lowerBound
        let ws = self.workerScratch[w].pointer, wsn = self.workerScratchFloats
        let x = act.a + view.ffn.lowerBound, wd = view.down.offset(row: range.lowerBound, col: 0)
        guard weighted && e < E, let weights = rowWeight.baseAddress.map({ $0 + layout.rowStart[e] }) else {
          GEMM.xWt(n: n, rows: range.count, k: view.ffn.count, x: x, ldx: act.ld, w: wd, c: target, ldc: H,
                   accumulate: false, scratch: ws, scratchFloats: wsn, compute: compute, callTokens: quantTokens)
          return
        }
        GEMM.xWt(n: n, rows: range.count, k: view.ffn.count, x: x, ldx: act.ld, w: wd, c: target, ldc: H,
                 scratch: ws, scratchFloats: wsn, compute: compute, callTokens: quantTokens) { r0, rows, c0, cols in
          for i in r0..<(r0 + rows) { Self.scale(target + i * H + c0, by: weights[i], cols) }
        }
      }
    }

    // Combine: out[t] = sum over t's rows (fixed order) of weight * y (the
    // product rounded, then added: the same bits whether phase 2 scaled y or
    // not), plus the gated shared expert.
    let holders = expertShards
    let sharedGateVector = UnsafePointer(sharedExpertGate.pointer)
    runtime.parallelFor(T, costPerItem: (config.topK + 1) * H) { tokens in
      for t in tokens {
        let o = out + t * H
        o.update(repeating: 0, count: H)
        for i in routing.tokenRowOffsets[t]..<routing.tokenRowOffsets[t + 1] {
          let r = Int(routing.tokenRows[i])
          if split { Self.sumPartials(partial, holders[Int(routing.rowExpert[r])], row: r, into: y, H) }
          if weighted {
            Self.add(y + r * H, into: o, H)
          } else {
            Self.addScaled(y + r * H, by: routing.rowWeight[r], into: o, H)
          }
        }
        if shared {
          let r = R + t
          if split { Self.sumPartials(partial, holders[E], row: r, into: y, H) }
          let g = sigmoidScalar(dot(x + t * H, sharedGateVector, H))
          sharedGateValues[t] = g
          axpy(g, y + r * H, o, H)
        }
      }
    }

    let tokensPerExpert = Array(layout.rowCount.prefix(E))
    stats = LayerStats(tokens: T, rows: R, dropped: routing.dropped, tokensPerExpert: tokensPerExpert,
                       losses: Routing.losses(logits: logits, plan: routing))
    lastRouting = routing
    if save { saved = SavedForward(tokens: T, routing: routing, jittered: jittered) }
  }

  /// v[0..<n] *= alpha.
  @inlinable @inline(always)
  package static func scale(_ v: UnsafeMutablePointer<Float>, by alpha: Float, _ n: Int) {
    let av = Vec16(repeating: alpha)
    var h = 0
    while h + 16 <= n {
      store16(load16(v + h) * av, v + h)
      h += 16
    }
    while h < n {
      v[h] *= alpha
      h += 1
    }
  }

  /// dst[0..<n] += src (plain adds).
  @inlinable @inline(always)
  package static func add(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, _ n: Int) {
    var h = 0
    while h + 16 <= n {
      store16(load16(dst + h) + load16(src + h), dst + h)
      h += 16
    }
    while h < n {
      dst[h] += src[h]
      h += 1
    }
  }

  /// dst[0..<n] += (alpha * src): the product rounded before the add, as `scale` then `add`.
  @inline(__always)
  static func addScaled(_ src: UnsafePointer<Float>, by alpha: Float, into dst: UnsafeMutablePointer<Float>, _ n: Int) {
    let av = Vec16(repeating: alpha)
    var h = 0
    while h + 16 <= n {
      store16(load16(dst + h) + load16(src + h) * av, dst + h)
      h += 16
    }
    while h < n {
      dst[h] += src[h] * alpha
      h += 1
    }
  }

  /// y[row] = sum of the shards' partial outputs for that row, in shard order.
  @inline(__always)
  static func sumPartials(_ partial: [UnsafeMutablePointer<Float>], _ shards: [Int], row r: Int,
                          into y: UnsafeMutablePointer<Float>, _ H: Int) {
    let dst = y + r * H
    dst.update(from: partial[shards[0]] + r * H, count: H)
    for s in shards.dropFirst() { axpy(1, partial[s] + r * H, dst, H) }
  }

  // MARK: - Backward

  /// From dL/d out [T, H] of the last saved forward: writes dL/dx into gradX
  /// [T, H] and adds the weight gradients (including the balancing and z-loss
  /// terms, scaled by their coefficients) to the gradient buffers. Consumes
  /// the saved forward.
  /// With `expertWeights` false (the experts are frozen), the expert and
  /// shared-expert weight gradients are neither computed nor allocated: the
  /// backward then does the input gradient, the router and the shared-expert
  /// gate only, about half the products.
  /// `compute` overrides the configured precision of the expert products.
  public func backward(gradOut: UnsafePointer<Float>, gradX: UnsafeMutablePointer<Float>,
                       expertWeights: Bool = true, compute precision: ComputePrecision? = nil) throws {
    guard let state = saved else {
      throw MoEError.invalid("backward needs a forward run with save_for_backward since the last backward")
    }
    guard !config.storage.isQuantized else {
      throw MoEError.unsupported("backward needs f32 or bf16 expert weights; this layer holds \(config.storage.name) blocks (inference only)")
    }
    Runtime.keepBLASSingleThreaded()
    let T = state.tokens, routing = state.routing
    let E = config.experts, H = config.hidden, F = config.ffn, Fs = config.sharedFFN
    let shared = Fs > 0
    let R = routing.rows
    // Precision of the expert products (the router's stays f32).
    let compute = precision ?? config.expertCompute
    // The same buffers forward filled.
    let xSaved = try scratch.get("x_saved", floats: T * H)
    let logits = try scratch.get("logits", floats: T * E)
    let rows = try rowBuffers(routing: routing, tokens: T) { [scratch] name, floats in try scratch.get(name, floats: floats) }
    let xp = rows.xp, y = rows.y, layout = rows.layout, partial = rows.partial
    let sharedGateValues = rows.sharedGateValues
    let split = !partial.isEmpty
    let dRowWeight = try scratch.get("d_row_weight", floats: R)
    let dSharedLogit = try scratch.get("d_shared_logit", floats: T)
    let dLogits = try scratch.get("d_logits", floats: T * E)

    let gRouter = try gradient(.router).pointer
    // Frozen experts: their gradients never exist (the pointers are unused).
    let gGate = expertWeights ? try gradient(.gate).pointer : gRouter
    let gUp = expertWeights ? try gradient(.up).pointer : gRouter
    let gDown = expertWeights ? try gradient(.down).pointer : gRouter
    let gSharedGate = shared && expertWeights ? try gradient(.sharedGate).pointer : gGate
    let gSharedUp = shared && expertWeights ? try gradient(.sharedUp).pointer : gUp
    let gSharedDown = shared && expertWeights ? try gradient(.sharedDown).pointer : gDown
    let gSharedExpertGate = shared ? try gradient(.sharedExpertGate).pointer : gRouter
    saved = nil

    // B0: combine backward. dRowWeight[r] = dOut[t] . y[r]; y[r] becomes dY[r] = weight * dOut[t].
    runtime.parallelFor(T, costPerItem: (config.topK + 1) * H) { tokens in
      for t in tokens {
        let d = gradOut + t * H
        for i in routing.tokenRowOffsets[t]..<routing.tokenRowOffsets[t + 1] {
          let r = Int(routing.tokenRows[i])
          dRowWeight[r] = dot(d, y + r * H, H)
          Self.scaled(d, routing.rowWeight[r], into: y + r * H, H)
        }
        if shared {
          let r = R + t, g = sharedGateValues[t]
          dSharedLogit[t] = dot(d, y + r * H, H) * g * (1 - g)
          Self.scaled(d, g, into: y + r * H, H)
        }
      }
    }

    // B1: per slice column block: dWd += dY^T a; da = dY Wd; dg, du; dWg += dg^T x; dWu += du^T x.
    // (dWd and da both read dY, but as A^T (inner index: rows) and as A (inner
    // index: H): their packed panels differ, so each packs its own.)
    let ffnWork = shardWork(layout: layout, length: { $0.ffn.count }, unitCost: { _ in H })
    runPhase(ffnWork) { s, view, range, w in
      let e = view.expert, n = layout.rowCount[e]
      let act = layout.activations(e)
      let f0 = view.ffn.lowerBound + range.lowerBound, cols = range.count
      let dY = UnsafePointer(y + layout.rowStart[e] * H)
      let xRows = UnsafePointer(xp + layout.rowStart[e] * H)
      let Fe = e < E ? F : Fs
      let gradDown = e < E ? gDown + e * H * F : gSharedDown
      let gradGate = e < E ? gGate + e * F * H : gSharedGate
      let gradUp = e < E ? gUp + e * F * H : gSharedUp
      if expertWeights {
        GEMM.atB(n: n, m: H, cols: cols, a: dY, lda: H, b: act.a + f0, ldb: act.ld, c: gradDown + f0, ldc: Fe,
                 compute: compute)
      }
      // da = dY Wd, and on each finished strip (in cache) dg, du in place of g, u.
      let g = act.g + f0, u = act.u + f0, da = act.a + f0, ld = act.ld
      GEMM.aW(n: n, cols: cols, k: H, a: dY, lda: H, w: view.down.offset(row: 0, col: range.lowerBound),
              c: da, ldc: ld, compute: compute) { r0, rows, c0, width in
        for i in r0..<(r0 + rows) {
          let o = i * ld + c0
          swigluBackward(gate: g + o, up: u + o, gradOut: da + o, count: width)
        }
      }
      // dWg and dWu from one blocked loop: the x rows packed once for both.
      if expertWeights {
        GEMM.atBPair(n: n, m: cols, cols: H, a1: act.g + f0, a2: act.u + f0, lda: act.ld, b: xRows, ldb: H,
                     c1: gradGate + f0 * H, c2: gradUp + f0 * H, ldc: H, compute: compute)
      }
    }

    // B2: dx rows = dg Wg + du Wu, per slice and block of H columns (partial per shard when split).
    let hiddenWork = shardWork(layout: layout, length: { _ in H }, unitCost: { $0.ffn.count })
    runPhase(hiddenWork) { s, view, range, w in
      let e = view.expert, n = layout.rowCount[e]
      let act = layout.activations(e)
      let target = (split ? partial[s] : xp) + layout.rowStart[e] * H + range.lowerBound
      // Both products add into each block of the target while it is in cache.
      GEMM.aWSum(n: n, cols: range.count, k: view.ffn.count,
                 a1: act.g + view.ffn.lowerBound, w1: view.gate.offset(row: 0, col: range.lowerBound),
                 a2: act.u + view.ffn.lowerBound, w2: view.up.offset(row: 0, col: range.lowerBound),
                 lda: act.ld, c: target, ldc: H, compute: compute)
    }

    // B3: per token: routing backward to dLogits; dx = sum of its rows' dx (fixed
    // order) + shared-gate and router terms.
    let holders = expertShards
    let config = self.config
    let routerW = UnsafePointer(router.pointer)
    let sharedGateVector = UnsafePointer(sharedExpertGate.pointer)
    let noise: UnsafeMutablePointer<Float>? = state.jittered ? try scratch.get("jitter", floats: T * H) : nil
    runtime.parallelFor(T, costPerItem: (config.topK + 1 + E) * H) { tokens in
      Routing.backward(logits: logits, plan: routing, config: config.routingConfig, dRowWeight: dRowWeight,
                       balanceCoef: config.balanceCoef, zCoef: config.zCoef, dLogits: dLogits, tokenRange: tokens)
      withUnsafeTemporaryAllocation(of: Float.self, capacity: H) { routerTerm in
      let tmp = routerTerm.baseAddress!
      for t in tokens {
        let gx = gradX + t * H
        gx.update(repeating: 0, count: H)
        for i in routing.tokenRowOffsets[t]..<routing.tokenRowOffsets[t + 1] {
          let r = Int(routing.tokenRows[i])
          if split {
            for s in holders[Int(routing.rowExpert[r])] { axpy(1, partial[s] + r * H, gx, H) }
          } else {
            axpy(1, xp + r * H, gx, H)
          }
        }
        if shared {
          let r = R + t
          if split {
            for s in holders[E] { axpy(1, partial[s] + r * H, gx, H) }
          } else {
            axpy(1, xp + r * H, gx, H)
          }
          axpy(dSharedLogit[t], sharedGateVector, gx, H)
        }
        tmp.update(repeating: 0, count: H)
        for e in 0..<E { axpy(dLogits[t * E + e], routerW + e * H, tmp, H) }
        if let noise {
          for h in 0..<H { gx[h] += tmp[h] * noise[t * H + h] }
        } else {
          axpy(1, tmp, gx, H)
        }
      }
      }
    }

    // B4: router and shared-gate weight gradients, split by blocks of H columns.
    let routerInput: UnsafePointer<Float> = state.jittered
      ? UnsafePointer(try scratch.get("x_router", floats: T * H)) : UnsafePointer(xSaved)
    let blocks = (H + 15) / 16
    runtime.parallelFor(blocks, inlineBelow: 1 << 16, costPerItem: 16 * T * (E + 1)) { range in
      let h0 = range.lowerBound * 16, h1 = min(H, range.upperBound * 16)
      GEMM.atB(n: T, m: E, cols: h1 - h0, a: dLogits, lda: E, b: routerInput + h0, ldb: H, c: gRouter + h0, ldc: H)
      if shared {
        GEMM.atB(n: T, m: 1, cols: h1 - h0, a: dSharedLogit, lda: 1, b: xSaved + h0, ldb: H,
                 c: gSharedExpertGate + h0, ldc: H)
      }
    }
  }

  @inlinable @inline(always)
  package static func scaled(_ src: UnsafePointer<Float>, _ alpha: Float, into dst: UnsafeMutablePointer<Float>, _ n: Int) {
    for h in 0..<n { dst[h] = alpha * src[h] }
  }

  // MARK: - Work partition

  /// Splits each shard's slices into 16-column units along `length` (each
  /// unit costs rows * unitCost per column) and gives each worker of the shard
  /// a contiguous run of units of about equal cost. Returns [shard][local worker].
  func shardWork(layout: RowLayout, length: (SliceWeights) -> Int, unitCost: (SliceWeights) -> Int) -> [[[WorkItem]]] {
    plan.shards.indices.map { s in
      let views = shardSlices[s]
      let workers = plan.shards[s].workers.count
      var units: [(slice: Int, lo: Int, hi: Int, cost: Int)] = []
      for (i, v) in views.enumerated() {
        let n = layout.rowCount[v.expert], len = length(v), c = unitCost(v)
        guard n > 0, len > 0, c > 0 else { continue }
        var lo = 0
        while lo < len {
          let hi = min(len, lo + PlacementPlan.alignment)
          units.append((i, lo, hi, n * c * (hi - lo)))
          lo = hi
        }
      }
      return Self.partition(units, workers: workers)
    }
  }

  package static func partition(_ units: [(slice: Int, lo: Int, hi: Int, cost: Int)], workers: Int) -> [[WorkItem]] {
    var result = [[WorkItem]](repeating: [], count: workers)
    let total = units.reduce(0) { $0 + $1.cost }
    guard total > 0 else { return result }
    var before = 0
    for u in units {
      let middle = Double(before) + Double(u.cost) / 2
      let w = min(workers - 1, Int(middle * Double(workers) / Double(total)))
      before += u.cost
      if let last = result[w].last, last.slice == u.slice, last.range.upperBound == u.lo {
        result[w][result[w].count - 1].range = last.range.lowerBound..<u.hi
      } else {
        result[w].append(WorkItem(slice: u.slice, range: u.lo..<u.hi))
      }
    }
    return result
  }

  /// Runs body(shard, slice, range, worker) for every work item on its worker.
  func runPhase(_ work: [[[WorkItem]]], _ body: (Int, SliceWeights, Range<Int>, Int) -> Void) {
    guard work.contains(where: { $0.contains(where: { !$0.isEmpty }) }) else { return }
    let shards = plan.shards
    let slices = shardSlices
    runtime.pool.run { w in
      for (s, shard) in shards.enumerated() {
        guard let local = shard.workers.firstIndex(of: w) else { continue }
        for item in work[s][local] { body(s, slices[s][item.slice], item.range, w) }
      }
    }
  }
}
