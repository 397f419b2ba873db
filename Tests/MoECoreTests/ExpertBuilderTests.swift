@testable import MoESupport
@testable import MoEFormats
@testable import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif
import Testing

@Suite struct ExpertBuilderTests {
  static let I = 16, H = 8

  /// A random dense FFN (gate/up [I, H], down [H, I]) with distinct values.
  static func dense(I: Int = I, H: Int = H, seed: UInt64 = 1) -> DenseFFN {
    var r = Rng(seed: seed, stream: [42])
    func w(_ n: Int) -> [Float] { (0..<n).map { _ in Float(r.normal() * 0.1 + 0.01) } }
    return DenseFFN(intermediate: I, hidden: H, gate: w(I * H), up: w(I * H), down: w(H * I))
  }

  static func options(_ method: UpcycleOptions.Method, experts: Int = 4, topK: Int = 2, seed: UInt64 = 7,
                      _ edit: (inout UpcycleOptions) -> Void = { _ in }) -> UpcycleOptions {
    var o = UpcycleOptions()
    o.method = method
    o.numExperts = experts
    o.topK = topK
    o.seed = seed
    edit(&o)
    return o
  }

  static func expert(_ b: ExpertBuilder, _ e: Int, _ p: Projection) -> [Float] {
    let shape = b.shape(p)
    var out = [Float](repeating: .nan, count: shape[0] * shape[1])
    out.withUnsafeMutableBufferPointer { b.expert(e, p, into: $0.baseAddress!) }
    return out
  }

  static func shared(_ b: ExpertBuilder, _ p: Projection) -> [Float] {
    var out = [Float](repeating: .nan, count: b.dense.intermediate * b.dense.hidden)
    out.withUnsafeMutableBufferPointer { b.sharedExpert(p, into: $0.baseAddress!) }
    return out
  }

  /// Rows `rows` of a row-major [*, H] matrix, flattened.
  static func rows(_ w: [Float], _ rows: [Int], H: Int) -> [Float] { rows.flatMap { w[($0 * H)..<(($0 + 1) * H)] } }

  /// Columns `cols` of a row-major [H, I] matrix, as a row-major [H, cols.count] matrix.
  static func columns(_ w: [Float], _ cols: [Int], I: Int, H: Int) -> [Float] {
    (0..<H).flatMap { h in cols.map { w[h * I + $0] } }
  }

  static func bitsEqual(_ a: [Float], _ b: [Float]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.bitPattern == $1.bitPattern }
  }

  // MARK: copy

  @Test func copyExpertsEqualDense() throws {
    let d = Self.dense()
    let b = try ExpertBuilder(options: Self.options(.copy), layer: 0, dense: d)
    #expect(b.expertSize == Self.I)
    #expect(b.shape(.gate) == [Self.I, Self.H])
    #expect(b.shape(.up) == [Self.I, Self.H])
    #expect(b.shape(.down) == [Self.H, Self.I])
    for e in 0..<4 {
      #expect(Self.bitsEqual(Self.expert(b, e, .gate), d.gate))
      #expect(Self.bitsEqual(Self.expert(b, e, .up), d.up))
      #expect(Self.bitsEqual(Self.expert(b, e, .down), d.down))
    }
  }

  // MARK: router

  @Test func routerInitializations() throws {
    let d = Self.dense(I: 16, H: 64)
    let normal = try ExpertBuilder(options: Self.options(.copy, experts: 8) { $0.routerStd = 0.5 }, layer: 3, dense: d).router()
    #expect(normal.count == 8 * 64)
    let mean = normal.reduce(0, +) / Float(normal.count)
    let std = (normal.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(normal.count)).squareRoot()
    #expect(abs(mean) < 0.1)
    #expect(abs(std - 0.5) < 0.1, "router std \(std)")
    // Rows differ from each other (no accidental repetition outside granular).
    for e in 1..<8 { #expect(Array(normal[0..<64]) != Array(normal[(e * 64)..<((e + 1) * 64)])) }

    let zeros = try ExpertBuilder(options: Self.options(.copy, experts: 8) { $0.routerInit = .zeros }, layer: 3, dense: d).router()
    #expect(zeros == [Float](repeating: 0, count: 8 * 64))

    let uni = try ExpertBuilder(options: Self.options(.copy, experts: 8) { $0.routerInit = .uniform; $0.routerStd = 0.5 }, layer: 3, dense: d).router()
    let half = Float(0.5 * 3.0.squareRoot())
    #expect(uni.allSatisfy { $0 >= -half && $0 <= half })
    let uMean = uni.reduce(0, +) / Float(uni.count)
    let uStd = (uni.map { ($0 - uMean) * ($0 - uMean) }.reduce(0, +) / Float(uni.count)).squareRoot()
    #expect(abs(uStd - 0.5) < 0.06, "uniform router std \(uStd)")

    // Deterministic per (seed, layer); another layer or seed gives another router.
    let again = try ExpertBuilder(options: Self.options(.copy, experts: 8) { $0.routerStd = 0.5 }, layer: 3, dense: d).router()
    #expect(again == normal)
    let otherLayer = try ExpertBuilder(options: Self.options(.copy, experts: 8) { $0.routerStd = 0.5 }, layer: 4, dense: d).router()
    #expect(otherLayer != normal)
    let otherSeed = try ExpertBuilder(options: Self.options(.copy, experts: 8, seed: 8) { $0.routerStd = 0.5 }, layer: 3, dense: d).router()
    #expect(otherSeed != normal)
  }

  // MARK: drop

  @Test func dropRedrawsExactlyTheSelectedNeurons() throws {
    let d = Self.dense()
    let I = Self.I, H = Self.H
    let b = try ExpertBuilder(options: Self.options(.drop) { $0.ratio = 0.5 }, layer: 2, dense: d)
    #expect(b.expertSize == I)
    for e in 0..<4 {
      for p in Projection.allCases {
        let sel = b.perturbedNeurons(e, p)
        #expect(sel.count == 8)
        #expect(Set(sel).count == 8 && sel == sel.sorted() && sel.allSatisfy { $0 >= 0 && $0 < I })
        let w = Self.expert(b, e, p)
        let orig = d.weights(p)
        var changedOutside = 0, unchangedInside = 0
        for i in 0..<I {
          for h in 0..<H {
            let k = p == .down ? h * I + i : i * H + h
            let same = w[k].bitPattern == orig[k].bitPattern
            if sel.contains(i) { if same { unchangedInside += 1 } } else if !same { changedOutside += 1 }
          }
        }
        #expect(changedOutside == 0, "expert \(e) \(p): \(changedOutside) values outside the selected neurons changed")
        #expect(unchangedInside == 0, "expert \(e) \(p): \(unchangedInside) selected values kept their dense value")
        #expect(w.allSatisfy { $0.isFinite })
      }
    }
  }

  @Test(arguments: [(0.25, 4), (0.5, 8), (1.0, 16), (0.03, 0), (0.04, 1), (0.97, 16)])
  func dropCountFollowsRatio(_ ratio: Double, _ count: Int) throws {
    let b = try ExpertBuilder(options: Self.options(.drop) { $0.ratio = ratio }, layer: 0, dense: Self.dense())
    #expect(b.perturbedNeurons(1, .up).count == count)
  }

  @Test func dropDrawsFromTheSelectedSliceStatistics() throws {
    // Large enough to check the moments of the redrawn values: mean and std of the selected slice.
    let I = 64, H = 64
    var d = Self.dense(I: I, H: H)
    d.gate = d.gate.map { $0 * 3 + 0.5 }  // mean ~0.53, std ~0.3
    let b = try ExpertBuilder(options: Self.options(.drop) { $0.ratio = 0.5 }, layer: 0, dense: d)
    for p in Projection.allCases {
      let sel = b.perturbedNeurons(0, p)
      let orig = d.weights(p), w = Self.expert(b, 0, p)
      func moments(_ v: [Float]) -> (Double, Double) {
        let m = v.reduce(0.0) { $0 + Double($1) } / Double(v.count)
        let s = (v.reduce(0.0) { $0 + (Double($1) - m) * (Double($1) - m) } / Double(v.count)).squareRoot()
        return (m, s)
      }
      let pick: ([Float]) -> [Float] = p == .down
        ? { Self.columns($0, sel, I: I, H: H) } : { Self.rows($0, sel, H: H) }
      let (m0, s0) = moments(pick(orig))
      let (m1, s1) = moments(pick(w))
      // 2048 redrawn values: the mean is within ~0.1 std, the std within ~10%.
      #expect(abs(m1 - m0) < 0.1 * s0, "\(p): mean \(m1) vs \(m0)")
      #expect(abs(s1 / s0 - 1) < 0.1, "\(p): std \(s1) vs \(s0)")
    }
  }

  @Test func sharedIndicesOption() throws {
    let d = Self.dense()
    let sharedB = try ExpertBuilder(options: Self.options(.drop) { $0.sharedIndices = true }, layer: 1, dense: d)
    let indepB = try ExpertBuilder(options: Self.options(.drop), layer: 1, dense: d)
    for e in 0..<4 {
      let s = Projection.allCases.map { sharedB.perturbedNeurons(e, $0) }
      #expect(s[0] == s[1] && s[1] == s[2], "expert \(e): \(s)")
      let n = Projection.allCases.map { indepB.perturbedNeurons(e, $0) }
      // C(16, 8) = 12870 possible sets: with this fixed seed the three differ.
      #expect(n[0] != n[1] && n[1] != n[2] && n[0] != n[2], "expert \(e): \(n)")
      // The shared set is used by all three projections when building the expert.
      for p in Projection.allCases {
        let w = Self.expert(sharedB, e, p), orig = d.weights(p)
        for i in 0..<Self.I {
          let k = p == .down ? i : i * Self.H  // one element of neuron i
          #expect((w[k].bitPattern != orig[k].bitPattern) == s[0].contains(i))
        }
      }
    }
    // Different experts get different sets.
    for bld in [sharedB, indepB] {
      let sets = (0..<4).map { bld.perturbedNeurons($0, .gate) }
      #expect(Set(sets.map { $0.description }).count == 4, "\(sets)")
    }
    // ... and different layers too.
    let other = try ExpertBuilder(options: Self.options(.drop), layer: 2, dense: d)
    #expect(other.perturbedNeurons(0, .gate) != indepB.perturbedNeurons(0, .gate))
  }

  @Test func dropAndNoiseAreDeterministic() throws {
    let d = Self.dense()
    for m in [UpcycleOptions.Method.drop, .noise] {
      let a = try ExpertBuilder(options: Self.options(m), layer: 5, dense: d)
      let b = try ExpertBuilder(options: Self.options(m), layer: 5, dense: d)
      for e in 0..<4 {
        for p in Projection.allCases {
          #expect(Self.bitsEqual(Self.expert(a, e, p), Self.expert(b, e, p)))
          // Order of calls does not matter.
          _ = Self.expert(a, (e + 1) % 4, p)
          #expect(Self.bitsEqual(Self.expert(a, e, p), Self.expert(b, e, p)))
        }
      }
      #expect(!Self.bitsEqual(Self.expert(a, 0, .up), Self.expert(a, 1, .up)))
    }
  }

  // MARK: noise

  @Test func noisePerturbsTheSelectedNeurons() throws {
    let I = 64, H = 64
    let d = Self.dense(I: I, H: H)
    let b = try ExpertBuilder(options: Self.options(.noise) { $0.ratio = 0.25; $0.noiseStd = 0.05 }, layer: 0, dense: d)
    for p in Projection.allCases {
      let sel = Set(b.perturbedNeurons(1, p))
      #expect(sel.count == 16)
      let w = Self.expert(b, 1, p), orig = d.weights(p)
      var diffs: [Double] = []
      var changedOutside = 0
      for i in 0..<I {
        for h in 0..<H {
          let k = p == .down ? h * I + i : i * H + h
          if sel.contains(i) { diffs.append(Double(w[k]) - Double(orig[k])) }
          else if w[k].bitPattern != orig[k].bitPattern { changedOutside += 1 }
        }
      }
      #expect(changedOutside == 0)
      let mean = diffs.reduce(0, +) / Double(diffs.count)
      let std = (diffs.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(diffs.count)).squareRoot()
      #expect(abs(mean) < 0.005, "\(p): noise mean \(mean)")
      #expect(abs(std - 0.05) < 0.005, "\(p): noise std \(std)")
    }
  }

  // MARK: granular

  @Test func granularShardsAndScalesDown() throws {
    let d = Self.dense()
    let I = Self.I, H = Self.H
    let o = Self.options(.granular, experts: 4, topK: 2) { $0.granularity = 2 }
    let b = try ExpertBuilder(options: o, layer: 0, dense: d)
    #expect(b.expertSize == 8)
    #expect(b.shape(.gate) == [8, H])
    #expect(b.shape(.down) == [H, 8])
    for e in 0..<4 {
      let shard = Array(((e % 2) * 8)..<((e % 2 + 1) * 8))
      #expect(Self.bitsEqual(Self.expert(b, e, .gate), Self.rows(d.gate, shard, H: H)), "expert \(e) gate")
      #expect(Self.bitsEqual(Self.expert(b, e, .up), Self.rows(d.up, shard, H: H)), "expert \(e) up")
      // Renormalized routing: the whole scale G = 2 on down_proj (exact in float).
      let down = Self.columns(d.down, shard, I: I, H: H).map { $0 * 2 }
      #expect(Self.bitsEqual(Self.expert(b, e, .down), down), "expert \(e) down")
    }
    // Shards of one group reassemble the dense FFN: gate rows of experts 0 and 1 = all of dense gate.
    #expect(Self.bitsEqual(Self.expert(b, 0, .gate) + Self.expert(b, 1, .gate), d.gate))

    // Router rows repeated for each group of G consecutive experts.
    let r = try b.router()
    #expect(r.count == 4 * H)
    let row = { (e: Int) in Array(r[(e * H)..<((e + 1) * H)]) }
    #expect(row(0) == row(1))
    #expect(row(2) == row(3))
    #expect(row(0) != row(2))
    #expect(row(0).contains { $0 != 0 })
  }

  @Test func granularScalingModes() throws {
    let d = Self.dense()
    let H = Self.H, I = Self.I
    let shard0 = Array(0..<4)
    // G = 4, E = 8, k = 4.
    func build(_ edit: @escaping (inout UpcycleOptions) -> Void) throws -> ExpertBuilder {
      try ExpertBuilder(options: Self.options(.granular, experts: 8, topK: 4) { $0.granularity = 4; edit(&$0) }, layer: 0, dense: d)
    }
    func close(_ a: [Float], _ b: [Float]) -> Bool {
      a.count == b.count && zip(a, b).allSatisfy { abs($0 - $1) <= 1e-6 * max(1, abs($1)) }
    }
    let gate0 = Self.rows(d.gate, shard0, H: H), down0 = Self.columns(d.down, shard0, I: I, H: H)
    // Renormalized: down x G.
    let ren = try build { _ in }
    #expect(Self.bitsEqual(Self.expert(ren, 0, .gate), gate0))
    #expect(Self.bitsEqual(Self.expert(ren, 0, .down), down0.map { $0 * 4 }))
    // softmax-topk without renormalization: down x E*G/k = 8.
    let plain = try build { $0.routing = .softmaxTopK }
    #expect(Self.bitsEqual(Self.expert(plain, 0, .down), down0.map { $0 * 8 }))
    // Cube root: G^(1/3) on each projection.
    let cube = try build { $0.granularScaling = .cubeRoot }
    let c = Float(pow(4.0, 1.0 / 3.0))
    #expect(close(Self.expert(cube, 0, .gate), gate0.map { $0 * c }))
    #expect(close(Self.expert(cube, 0, .up), Self.rows(d.up, shard0, H: H).map { $0 * c }))
    #expect(close(Self.expert(cube, 0, .down), down0.map { $0 * c }))
    // None.
    let none = try build { $0.granularScaling = .none }
    #expect(Self.bitsEqual(Self.expert(none, 0, .down), down0))
    #expect(Self.bitsEqual(Self.expert(none, 5, .gate), Self.rows(d.gate, Array(4..<8), H: H)))
    // Router: 2 groups of 4.
    let r = try ren.router()
    let row = { (e: Int) in Array(r[(e * H)..<((e + 1) * H)]) }
    for e in 1..<4 { #expect(row(e) == row(0)) }
    for e in 5..<8 { #expect(row(e) == row(4)) }
    #expect(row(0) != row(4))
  }

  // MARK: partition

  @Test(arguments: [UpcycleOptions.PartitionSelect.random, .uniform, .importance])
  func disjointPartitionCoversAllNeurons(_ select: UpcycleOptions.PartitionSelect) throws {
    let d = Self.dense()
    for G in [0, 4] {  // 0 = automatic = E
      let o = Self.options(.partition, experts: 4, topK: 2) {
        $0.granularity = G; $0.partitionDisjoint = true; $0.partitionSelect = select
      }
      let b = try ExpertBuilder(options: o, layer: 1, dense: d)
      #expect(b.expertSize == 4)
      guard let sets = b.neurons else { Issue.record("no neuron sets"); continue }
      #expect(sets.count == 4)
      for s in sets {
        #expect(s.count == 4)
        #expect(s == s.sorted())
      }
      #expect(sets.flatMap { $0 }.sorted() == Array(0..<16), "\(select): \(sets)")
      if select == .uniform { #expect(sets == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]) }
      if select == .importance {
        // Neurons ranked by norm and dealt round-robin: expert e gets ranks e, e+4, e+8, e+12.
        let score = ExpertBuilder.importance(d)
        let order = Array(0..<16).sorted { score[$0] > score[$1] }
        for e in 0..<4 { #expect(sets[e] == [order[e], order[e + 4], order[e + 8], order[e + 12]].sorted()) }
      }
      if select == .random {
        // Not simply the uniform or contiguous split.
        #expect(sets != [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]])
        #expect(sets != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])
      }
      // The expert weights are the selected neurons, down scaled by I / (k m) = 16 / 8 = 2.
      for e in 0..<4 {
        #expect(Self.bitsEqual(Self.expert(b, e, .gate), Self.rows(d.gate, sets[e], H: Self.H)))
        #expect(Self.bitsEqual(Self.expert(b, e, .up), Self.rows(d.up, sets[e], H: Self.H)))
        #expect(Self.bitsEqual(Self.expert(b, e, .down), Self.columns(d.down, sets[e], I: Self.I, H: Self.H).map { $0 * 2 }))
      }
    }
  }

  @Test func importanceIsTheNeuronNorm() throws {
    let d = Self.dense()
    let s = ExpertBuilder.importance(d)
    #expect(s.count == Self.I)
    for i in 0..<Self.I {
      var sq = 0.0
      for h in 0..<Self.H {
        sq += Double(d.gate[i * Self.H + h]) * Double(d.gate[i * Self.H + h])
        sq += Double(d.up[i * Self.H + h]) * Double(d.up[i * Self.H + h])
        sq += Double(d.down[h * Self.I + i]) * Double(d.down[h * Self.I + i])
      }
      #expect(abs(s[i] - sq.squareRoot()) < 1e-12)
    }
  }

  @Test(arguments: [UpcycleOptions.PartitionSelect.random, .uniform, .importance])
  func overlappingPartition(_ select: UpcycleOptions.PartitionSelect) throws {
    let d = Self.dense()
    // E = 4, G = 2: each expert has m = 8 of the 16 neurons.
    let o = Self.options(.partition, experts: 4, topK: 1) { $0.granularity = 2; $0.partitionSelect = select }
    let b = try ExpertBuilder(options: o, layer: 0, dense: d)
    #expect(b.expertSize == 8)
    let sets = b.neurons!
    for s in sets {
      #expect(s.count == 8 && Set(s).count == 8 && s == s.sorted() && s.allSatisfy { $0 >= 0 && $0 < 16 })
    }
    #expect(Set(sets.map { $0.description }).count > 1, "\(sets)")
    if select == .uniform {
      // Evenly spaced with stride I/m = 2 and a per-expert offset e/E of a stride.
      #expect(sets[0] == [0, 2, 4, 6, 8, 10, 12, 14])
      #expect(sets[2] == [1, 3, 5, 7, 9, 11, 13, 15])
    }
    // Scale I / (k m) = 16 / 8 = 2.
    #expect(Self.bitsEqual(Self.expert(b, 3, .down), Self.columns(d.down, sets[3], I: 16, H: Self.H).map { $0 * 2 }))
  }

  @Test func importancePartitionPrefersStrongNeurons() throws {
    // One neuron with a huge norm is in every expert's sample; a zero neuron in none (almost surely).
    var d = Self.dense()
    for h in 0..<Self.H { d.gate[5 * Self.H + h] = 100; d.gate[9 * Self.H + h] = 0; d.up[9 * Self.H + h] = 0; d.down[h * Self.I + 9] = 0 }
    let o = Self.options(.partition, experts: 8, topK: 2) { $0.granularity = 4; $0.partitionSelect = .importance }
    let sets = try ExpertBuilder(options: o, layer: 0, dense: d).neurons!
    for s in sets {
      #expect(s.contains(5))
      #expect(!s.contains(9))
    }
  }

  @Test func partitionScaleOption() throws {
    let d = Self.dense()
    // E = 4, G = 4 (m = 4), k = 2: I / (k m) = 2; k = 1: 4; partitionScale off: 1.
    for (k, scale, on) in [(2, Float(2), true), (1, Float(4), true), (2, Float(1), false)] {
      let o = Self.options(.partition, experts: 4, topK: k) { $0.partitionScale = on }
      let b = try ExpertBuilder(options: o, layer: 0, dense: d)
      let set = b.neurons![1]
      #expect(Self.bitsEqual(Self.expert(b, 1, .down), Self.columns(d.down, set, I: 16, H: Self.H).map { $0 * scale }))
      #expect(Self.bitsEqual(Self.expert(b, 1, .gate), Self.rows(d.gate, set, H: Self.H)))
    }
  }

  // MARK: shared expert

  @Test func sharedExpertHalvesRoutedDown() throws {
    let d = Self.dense()
    let b = try ExpertBuilder(options: Self.options(.copy) { $0.sharedExpert = true }, layer: 0, dense: d)
    for e in 0..<4 {
      #expect(Self.bitsEqual(Self.expert(b, e, .gate), d.gate))
      #expect(Self.bitsEqual(Self.expert(b, e, .up), d.up))
      #expect(Self.bitsEqual(Self.expert(b, e, .down), d.down.map { $0 * 0.5 }))
    }
    // The shared expert itself is an exact copy of the dense FFN.
    #expect(Self.bitsEqual(Self.shared(b, .gate), d.gate))
    #expect(Self.bitsEqual(Self.shared(b, .up), d.up))
    #expect(Self.bitsEqual(Self.shared(b, .down), d.down))
    // Routed weights sum to 1 and the shared expert's zero-logit sigmoid gate is 0.5:
    // routed down (0.5 W) + 0.5 x shared down (W) reproduces W exactly.
    let sum = zip(Self.expert(b, 0, .down), Self.shared(b, .down)).map { $0 + 0.5 * $1 }
    #expect(Self.bitsEqual(sum, d.down))

    // Combined with partition scaling: I / (k m) * 0.5.
    let p = try ExpertBuilder(options: Self.options(.partition, experts: 4, topK: 2) { $0.sharedExpert = true }, layer: 0, dense: d)
    let set = p.neurons![0]
    #expect(Self.bitsEqual(Self.expert(p, 0, .down), Self.columns(d.down, set, I: 16, H: Self.H).map { $0 * 1 }))
    // Combined with granular (G = 2, renormalized): 2 * 0.5 = 1.
    let g = try ExpertBuilder(options: Self.options(.granular, experts: 4, topK: 2) { $0.granularity = 2; $0.sharedExpert = true }, layer: 0, dense: d)
    #expect(Self.bitsEqual(Self.expert(g, 1, .down), Self.columns(d.down, Array(8..<16), I: 16, H: Self.H)))
    #expect(Self.bitsEqual(Self.shared(g, .down), d.down))
  }
}
