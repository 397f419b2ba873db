import Testing
@testable import MoESupport
@testable import MoERuntime
@testable import MoELayer

#if canImport(Glibc)
import Glibc
#endif

@Suite struct VectorKernelTests {
  @Test func exp16MatchesLibm() {
    var x: Float = -90
    var worst: Double = 0
    var worstX: Float = 0
    while x < 89 {
      var v = Vec16()
      for i in 0..<16 { v[i] = x + Float(i) * 0.0137 }
      let e = exp16(v)
      for i in 0..<16 {
        let ref = exp(Double(v[i]).clamped(Double(Float(-87.3)), Double(Float(88.3))))
        let rel = abs(Double(e[i]) - ref) / ref
        if rel > worst { worst = rel; worstX = v[i] }
      }
      x += 0.219
    }
    #expect(worst < 3e-7, "worst relative error \(worst) at x = \(worstX)")
  }

  /// Out-of-range and NaN inputs take the clamp's bounds: finite, positive results.
  @Test func exp16ClampsInfinitiesAndNaN() {
    var x = Vec16(repeating: 1)
    x[0] = .nan; x[1] = -.infinity; x[2] = -1000; x[3] = .infinity; x[4] = 1000; x[5] = -87.3; x[6] = 88.3
    let e = exp16(x)
    let low = exp16(Vec16(repeating: -87.3))[0], high = exp16(Vec16(repeating: 88.3))[0]
    #expect(low > 0 && high.isFinite)
    #expect([e[0], e[1], e[2], e[5]].allSatisfy { $0.bitPattern == low.bitPattern })
    #expect([e[3], e[4], e[6]].allSatisfy { $0.bitPattern == high.bitPattern })
    #expect(abs(e[7] - Float(M_E)) <= 3e-7 * Float(M_E))
    // max16 keeps the larger lane and skips a NaN in its second argument.
    var b = Vec16(repeating: 2)
    b[0] = .nan; b[1] = 0.5
    let m = max16(Vec16(repeating: 1), b)
    #expect(m[0] == 1 && m[1] == 1 && m[2] == 2)
  }

  @Test(arguments: [0, 1, 15, 16, 17, 33, 100])
  func swigluMatchesReference(count: Int) {
    var rng = Rng(seed: UInt64(count))
    let g = (0..<count).map { _ in Float(rng.normal() * 4) }
    let u = (0..<count).map { _ in Float(rng.normal()) }
    let da = (0..<count).map { _ in Float(rng.normal()) }
    var a = [Float](repeating: .nan, count: count)
    g.withUnsafeBufferPointer { gp in u.withUnsafeBufferPointer { up in a.withUnsafeMutableBufferPointer { ap in
      if count > 0 { swigluForward(gate: gp.baseAddress!, up: up.baseAddress!, out: ap.baseAddress!, count: count) }
    } } }
    var dg = g, du = u
    dg.withUnsafeMutableBufferPointer { gp in du.withUnsafeMutableBufferPointer { up in da.withUnsafeBufferPointer { dp in
      if count > 0 { swigluBackward(gate: gp.baseAddress!, up: up.baseAddress!, gradOut: dp.baseAddress!, count: count) }
    } } }
    for i in 0..<count {
      let ref = SwiGLUReference.forward(g[i], u[i])
      #expect(abs(a[i] - ref) <= 1e-5 * max(1, abs(ref)), "a[\(i)] = \(a[i]) vs \(ref)")
      let (rg, ru) = SwiGLUReference.backward(g[i], u[i], da[i])
      #expect(abs(dg[i] - rg) <= 1e-5 * max(1, abs(rg)), "dg[\(i)] = \(dg[i]) vs \(rg)")
      #expect(abs(du[i] - ru) <= 1e-5 * max(1, abs(ru)), "du[\(i)] = \(du[i]) vs \(ru)")
    }
  }

  @Test func swigluBackwardMatchesFiniteDifferences() {
    for g0 in stride(from: Float(-6), through: 6, by: 0.75) {
      let u: Float = 0.7
      let eps = 1e-3
      let plus = Double(SwiGLUReference.forward(g0 + Float(eps), u))
      let minus = Double(SwiGLUReference.forward(g0 - Float(eps), u))
      let numeric = (plus - minus) / (2 * eps)
      let (dg, du) = SwiGLUReference.backward(g0, u, 1)
      #expect(abs(Double(dg) - numeric) < 2e-3, "g=\(g0): \(dg) vs \(numeric)")
      #expect(abs(Double(du) - Double(SwiGLUReference.forward(g0, 1))) < 1e-6)
    }
  }
}

@Suite struct GEMMKernelTests {
  /// The streaming kernel (n <= 16, both row walks) and the sgemm path (n > 16) against the plain reference.
  @Test(arguments: [1, 2, 3, 4, 5, 7, 16, 17, 40], [DType.f32, .bf16])
  func productMatchesReference(tokens n: Int, dtype: DType) {
    for (rows, k) in [(1, 1), (5, 16), (9, 33), (40, 100), (6, 200)] {
      var rng = Rng(seed: UInt64(n * 1000 + rows * 10 + k))
      let x = (0..<(n * k)).map { _ in Float(rng.normal()) }
      let wf = (0..<(rows * k)).map { _ in Float(rng.normal()) }
      let wb = wf.map(floatToBF16)
      let check: (WeightMatrix) -> Void = { w in
        let ref = GEMMReference.xWt(n: n, rows: rows, k: k, x: x, w: w)
        for walk in RowStreaming.allCases {
          let got = GEMM.productForTesting(n: n, rows: rows, k: k, x: x, w: w, walk: walk)
          for i in got.indices {
            #expect(abs(got[i] - ref[i]) <= 1e-4 * max(1, abs(ref[i])) * Float(k).squareRoot(),
                    "n=\(n) rows=\(rows) k=\(k) \(dtype.name) \(walk) [\(i)]: \(got[i]) vs \(ref[i])")
          }
        }
      }
      if dtype == .f32 {
        wf.withUnsafeBytes { check(WeightMatrix(base: $0.baseAddress!, dtype: .f32, ld: k)) }
      } else {
        wb.withUnsafeBytes { check(WeightMatrix(base: $0.baseAddress!, dtype: .bf16, ld: k)) }
      }
    }
  }
}

@Suite struct WorkPartitionTests {
  @Test func partitionCoversEveryUnitOnceInOrder() {
    let units: [(slice: Int, lo: Int, hi: Int, cost: Int)] =
      [(0, 0, 16, 5), (0, 16, 32, 5), (0, 32, 40, 2), (1, 0, 16, 100), (2, 0, 16, 1), (2, 16, 20, 1)]
    for workers in 1...8 {
      let parts = MoELayer.partition(units, workers: workers)
      #expect(parts.count == workers)
      var covered: [Int: [Range<Int>]] = [:]
      for p in parts { for item in p { covered[item.slice, default: []].append(item.range) } }
      #expect(covered[0]?.reduce(0) { $0 + $1.count } == 40)
      #expect(covered[1]?.reduce(0) { $0 + $1.count } == 16)
      #expect(covered[2]?.reduce(0) { $0 + $1.count } == 20)
    }
    // Balanced: two equal halves go to two workers.
    let even: [(slice: Int, lo: Int, hi: Int, cost: Int)] = (0..<8).map { (0, $0 * 16, $0 * 16 + 16, 10) }
    let two = MoELayer.partition(even, workers: 2)
    #expect(two[0] == [WorkItem(slice: 0, range: 0..<64)])
    #expect(two[1] == [WorkItem(slice: 0, range: 64..<128)])
    #expect(MoELayer.partition([], workers: 3).allSatisfy { $0.isEmpty })
  }
}

@Suite struct PlacementPlanTests {
  let twoNodes = [NodeWorkers(node: 0, workers: [0, 1, 2, 3]), NodeWorkers(node: 1, workers: [4, 5, 6, 7])]
  let uneven = [NodeWorkers(node: 0, workers: [0, 1, 2]), NodeWorkers(node: 1, workers: [3, 4, 5, 6, 7])]

  func coverage(_ plan: PlacementPlan, experts: Int, ffn: [Int]) -> Bool {
    for e in 0..<experts {
      let ranges = plan.shards.flatMap { $0.slices.filter { $0.expert == e }.map(\.ffn) }.sorted { $0.lowerBound < $1.lowerBound }
      var next = 0
      for r in ranges { guard r.lowerBound == next else { return false }; next = r.upperBound }
      guard next == ffn[e] else { return false }
    }
    return true
  }

  @Test func rowSliceSplitsEveryExpertByWorkerShare() throws {
    let plan = try PlacementPlan.make(policy: .rowSlice, ffnSizes: [1536, 1536, 512], expectedLoad: [0.25, 0.25, 1],
                                      nodes: twoNodes)
    #expect(plan.shards.count == 2 && plan.splitsExperts)
    #expect(plan.shards[0].slices.map(\.ffn) == [0..<768, 0..<768, 0..<256])
    #expect(plan.shards[1].slices.map(\.ffn) == [768..<1536, 768..<1536, 256..<512])
    #expect(coverage(plan, experts: 3, ffn: [1536, 1536, 512]))
    let skewed = try PlacementPlan.make(policy: .rowSlice, ffnSizes: [1536], expectedLoad: [1], nodes: uneven)
    // 3/8 of 1536 = 576, a multiple of 16.
    #expect(skewed.shards[0].slices[0].ffn == 0..<576)
    #expect(coverage(skewed, experts: 1, ffn: [1536]))
    for f in [1, 15, 17, 100] {
      let small = try PlacementPlan.make(policy: .rowSlice, ffnSizes: [f], expectedLoad: [1], nodes: uneven)
      #expect(coverage(small, experts: 1, ffn: [f]), "F=\(f)")
    }
    // Quantized rows split at whole blocks of 32: half of 96 is 48, which rounds to 64.
    let blocks = try PlacementPlan.make(policy: .rowSlice, ffnSizes: [96, 32], expectedLoad: [0.5, 1], nodes: twoNodes,
                                       alignment: 32)
    #expect(blocks.shards[0].slices.map(\.ffn) == [0..<64, 0..<32])
    #expect(blocks.shards[1].slices.map(\.ffn) == [64..<96])
    #expect(coverage(blocks, experts: 2, ffn: [96, 32]))
  }

  @Test func expertPolicyBalancesLoadPerWorker() throws {
    let plan = try PlacementPlan.make(policy: .expert, ffnSizes: Array(repeating: 64, count: 8),
                                      expectedLoad: Array(repeating: 0.25, count: 8), nodes: uneven)
    #expect(!plan.splitsExperts)
    #expect(coverage(plan, experts: 8, ffn: Array(repeating: 64, count: 8)))
    // 3 and 5 workers: 3 and 5 experts.
    #expect(plan.shards[0].slices.count == 3 && plan.shards[1].slices.count == 5)
  }

  @Test func singleNodeAndUnboundPoliciesKeepOneShard() throws {
    for policy in PlacementPolicy.allCases {
      let plan = try PlacementPlan.make(policy: policy, ffnSizes: [64, 64], expectedLoad: [1, 1],
                                        nodes: [NodeWorkers(node: 0, workers: [0, 1])])
      #expect(plan.shards.count == 1 && !plan.splitsExperts)
    }
    for policy in [PlacementPolicy.interleave, .none] {
      let plan = try PlacementPlan.make(policy: policy, ffnSizes: [64], expectedLoad: [1], nodes: twoNodes)
      #expect(plan.shards.count == 1 && plan.shards[0].node == nil && plan.shards[0].workers.count == 8)
    }
    #expect(throws: MoEError.self) {
      try PlacementPlan.make(policy: .rowSlice, ffnSizes: [64], expectedLoad: [1], nodes: [])
    }
  }
}

@Suite struct RoutingTests {
  func route(_ logits: [Float], T: Int, _ config: RoutingConfig) -> RoutingPlan {
    logits.withUnsafeBufferPointer { Routing.route(logits: $0.baseAddress!, tokens: T, config: config) }
  }

  @Test func topKSoftmaxEqualsRenormalizedSoftmax() {
    var rng = Rng(seed: 3)
    let T = 9, E = 6
    let logits = (0..<(T * E)).map { _ in Float(rng.normal()) }
    let a = route(logits, T: T, RoutingConfig(experts: E, topK: 3, mode: .softmaxTopKRenorm))
    let b = route(logits, T: T, RoutingConfig(experts: E, topK: 3, mode: .topKSoftmax))
    #expect(a.rowExpert == b.rowExpert && a.rowToken == b.rowToken)
    for r in 0..<a.rows { #expect(abs(a.rowWeight[r] - b.rowWeight[r]) < 1e-6) }
  }

  @Test func capacityDropsLaterSlotsFirst() {
    // Every token prefers expert 0, then expert 1.
    let T = 8, E = 4
    var logits = [Float](repeating: 0, count: T * E)
    for t in 0..<T { logits[t * E] = 3; logits[t * E + 1] = 2 }
    let plan = route(logits, T: T, RoutingConfig(experts: E, topK: 2, capacityFactor: 1))
    // capacity = ceil(1 * 8 * 2 / 4) = 4: tokens 0-3 keep expert 0, tokens 0-3 keep expert 1.
    #expect(plan.rowsOf(expert: 0) == 4 && plan.rowsOf(expert: 1) == 4 && plan.dropped == 8)
    #expect(Array(plan.rowToken[0..<4]) == [0, 1, 2, 3])
    #expect(plan.selectedPerExpert == [8, 8, 0, 0])
  }

  @Test func expertChoicePicksTopTokensPerExpert() {
    let T = 6, E = 2
    var logits = [Float](repeating: 0, count: T * E)
    for t in 0..<T { logits[t * E] = Float(t); logits[t * E + 1] = -Float(t) }
    let plan = route(logits, T: T, RoutingConfig(experts: E, topK: 1, capacityFactor: 1, expertChoice: true))
    // capacity = ceil(6 * 1 / 2) = 3; expert 0 takes tokens 3,4,5 and expert 1 tokens 0,1,2.
    #expect(Array(plan.rowToken[0..<3]) == [3, 4, 5])
    #expect(Array(plan.rowToken[3..<6]) == [0, 1, 2])
    #expect(plan.tokenRowOffsets == [0, 1, 2, 3, 4, 5, 6])
  }

  @Test func nanLogitsStillRouteToValidExperts() {
    let logits: [Float] = [.nan, 1, .nan, 0, .nan, .nan, .nan, .nan]
    let plan = route(logits, T: 2, RoutingConfig(experts: 4, topK: 2))
    #expect(plan.rowExpert.allSatisfy { $0 >= 0 && $0 < 4 })
    #expect(plan.rows == 4)
  }
}

extension Double {
  func clamped(_ lo: Double, _ hi: Double) -> Double { Swift.min(Swift.max(self, lo), hi) }
}
