@testable import MoESupport
@testable import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Data-aware upcycling on synthetic statistics: k-means, the calibration
/// selections, the calibrated scale against a brute-force expectation, and
/// the data-derived routers.
@Suite struct DataAwareTests {
  static let I = 16, H = 8, S = 40

  static func silu(_ v: Float) -> Float { v / (1 + exp(-v)) }

  /// Statistics of `d` over S random inputs, computed directly.
  static func statistics(_ d: DenseFFN, seed: UInt64 = 3) -> LayerStatistics {
    var r = Rng(seed: seed, stream: [9])
    let I = d.intermediate, H = d.hidden
    let x = (0..<(S * H)).map { _ in Float(r.normal()) }
    var act = [Float](repeating: 0, count: S * I)
    for t in 0..<S {
      for i in 0..<I {
        var g: Float = 0, u: Float = 0
        for h in 0..<H { g += x[t * H + h] * d.gate[i * H + h]; u += x[t * H + h] * d.up[i * H + h] }
        act[t * I + i] = silu(g) * u
      }
    }
    let n = Float(S)
    let absMean = (0..<I).map { i in (0..<S).reduce(Float(0)) { $0 + abs(act[$1 * I + i]) } / n }
    let sq = (0..<I).map { i in (0..<S).reduce(Float(0)) { $0 + act[$1 * I + i] * act[$1 * I + i] } / n }
    let threshold: Float = 0.02
    let freq = (0..<I).map { i in Float((0..<S).filter { abs(act[$0 * I + i]) > threshold }.count) / n }
    return LayerStatistics(absMean: absMean, squareMean: sq, fireFrequency: freq, threshold: threshold,
                           sketch: act, routerInputs: x)
  }

  static func builder(_ o: UpcycleOptions, _ d: DenseFFN, _ s: LayerStatistics) throws -> ExpertBuilder {
    var data = LayerData()
    data.statistics = s
    return try ExpertBuilder(options: o, layer: 1, dense: d, data: data)
  }

  // MARK: k-means

  @Test(arguments: [(12, 3), (16, 4), (30, 5), (8, 8), (7, 1)])
  func balancedKMeansCoversEveryPointOnce(n: Int, k: Int) {
    var r = Rng(seed: 5, stream: [UInt64(n)])
    let dim = 6
    let x = KMeans.normalizedRows((0..<(n * dim)).map { _ in Float(r.normal()) }, rows: n, dim: dim)
    var rng = Rng(seed: 1, stream: [2])
    let groups = KMeans.balanced(x, rows: n, dim: dim, k: k, rng: &rng)
    #expect(groups.count == k)
    #expect(groups.allSatisfy { $0.count == n / k })
    #expect(groups.flatMap { $0 }.sorted() == Array(0..<n))
    var again = Rng(seed: 1, stream: [2])
    #expect(KMeans.balanced(x, rows: n, dim: dim, k: k, rng: &again) == groups)
  }

  @Test func balancedKMeansFindsSeparatedGroups() {
    // Three tight groups of four points around orthogonal directions, shuffled.
    let dim = 3, order = [5, 0, 9, 2, 11, 7, 1, 4, 10, 3, 8, 6]
    var r = Rng(seed: 8, stream: [1])
    var x = [Float](repeating: 0, count: 12 * dim)
    for (row, p) in order.enumerated() {
      for i in 0..<dim { x[row * dim + i] = (i == p / 4 ? 1 : 0) + Float(r.normal() * 0.05) }
    }
    var rng = Rng(seed: 4, stream: [4])
    let groups = KMeans.balanced(KMeans.normalizedRows(x, rows: 12, dim: dim), rows: 12, dim: dim, k: 3, rng: &rng)
    let truth = Set((0..<3).map { g in Set((0..<12).filter { order[$0] / 4 == g }) })
    #expect(Set(groups.map { Set($0) }) == truth)
  }

  // MARK: selections

  @Test func clusterExpertsSumToTheDenseFFN() throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    let s = Self.statistics(d)
    let o = ExpertBuilderTests.options(.partition, experts: 4, topK: 4) { $0.partitionSelect = .cluster }
    let b = try Self.builder(o, d, s)
    #expect(b.neurons!.flatMap { $0 }.sorted() == Array(0..<Self.I))
    // Every expert at weight 1/E with its down_proj scaled by E: the dense FFN.
    var r = Rng(seed: 2, stream: [3])
    let x = (0..<Self.H).map { _ in Float(r.normal()) }
    func ffn(_ gate: [Float], _ up: [Float], _ down: [Float], _ m: Int) -> [Float] {
      let a = (0..<m).map { i -> Float in
        var g: Float = 0, u: Float = 0
        for h in 0..<Self.H { g += x[h] * gate[i * Self.H + h]; u += x[h] * up[i * Self.H + h] }
        return Self.silu(g) * u
      }
      return (0..<Self.H).map { h in (0..<m).reduce(Float(0)) { $0 + down[h * m + $1] * a[$1] } }
    }
    let dense = ffn(d.gate, d.up, d.down, Self.I)
    var sum = [Float](repeating: 0, count: Self.H)
    for e in 0..<4 {
      let y = ffn(ExpertBuilderTests.expert(b, e, .gate), ExpertBuilderTests.expert(b, e, .up),
                  ExpertBuilderTests.expert(b, e, .down), b.expertSize)
      for h in 0..<Self.H { sum[h] += y[h] / 4 }
    }
    for h in 0..<Self.H { #expect(abs(sum[h] - dense[h]) <= 1e-5 * max(1, abs(dense[h]))) }
  }

  @Test(arguments: [UpcycleOptions.Importance.l1, .l2, .frequency])
  func disjointActivationDealsTheMostImportantNeurons(importance: UpcycleOptions.Importance) throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    let s = Self.statistics(d)
    let o = ExpertBuilderTests.options(.partition, experts: 2, topK: 1) {
      $0.partitionSelect = .activation; $0.granularity = 4; $0.partitionDisjoint = true; $0.importance = importance
    }
    let b = try Self.builder(o, d, s)
    let score = importance.scores(s)
    let ranked = (0..<Self.I).sorted { score[$0] != score[$1] ? score[$0] > score[$1] : $0 < $1 }
    #expect(b.neurons![0] == [ranked[0], ranked[2], ranked[4], ranked[6]].sorted())
    #expect(b.neurons![1] == [ranked[1], ranked[3], ranked[5], ranked[7]].sorted())
  }

  @Test func sharedExpertFromTheMostFrequentNeurons() throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    var s = Self.statistics(d)
    s.fireFrequency = (0..<Self.I).map { Float(($0 * 7) % Self.I) / Float(Self.I) }  // distinct
    let o = ExpertBuilderTests.options(.partition, experts: 4, topK: 2) {
      $0.sharedFromFrequent = 4; $0.sharedExpert = true; $0.format = .qwen2Moe; $0.partitionDisjoint = true
    }
    let b = try Self.builder(o, d, s)
    let top = (0..<Self.I).sorted { s.fireFrequency[$0] > s.fireFrequency[$1] }.prefix(4).sorted()
    #expect(b.sharedNeurons == top)
    #expect(b.sharedSize == 4 && b.expertSize == 3)
    #expect(Set(b.neurons!.flatMap { $0 }).isDisjoint(with: top))
    #expect(b.neurons!.flatMap { $0 }.count == 12)
    let gate = ExpertBuilderTests.shared(b, .gate), down = ExpertBuilderTests.shared(b, .down)
    #expect(Array(gate[0..<(4 * Self.H)]) == ExpertBuilderTests.rows(d.gate, top, H: Self.H))
    let denseDown = ExpertBuilderTests.columns(d.down, top, I: Self.I, H: Self.H)
    #expect(Array(down[0..<(4 * Self.H)]) == denseDown.map { 2 * $0 })
  }

  @Test func leastImportantDropRedrawsTheSameLowNeuronsInEveryExpert() throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    let s = Self.statistics(d)
    let o = ExpertBuilderTests.options(.drop, experts: 3) { $0.ratio = 0.25; $0.dropSelect = .leastImportant }
    let b = try Self.builder(o, d, s)
    let score = UpcycleOptions.Importance.l2.scores(s)
    let lowest = (0..<Self.I).sorted { score[$0] < score[$1] }.prefix(4).sorted()
    for e in 0..<3 {
      let gate = ExpertBuilderTests.expert(b, e, .gate)
      let changed = (0..<Self.I).filter { i in
        (0..<Self.H).contains { gate[i * Self.H + $0] != d.gate[i * Self.H + $0] }
      }
      #expect(changed == lowest)
    }
    #expect(ExpertBuilderTests.expert(b, 0, .gate) != ExpertBuilderTests.expert(b, 1, .gate))
  }

  /// The calibrated scale against the expectation over every choice of k of
  /// E experts (each equally likely, weights 1/k), computed by brute force.
  @Test(arguments: [(4, 2), (4, 1), (3, 3)])
  func calibratedScaleMinimizesTheExpectedError(experts E: Int, topK k: Int) throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    let s = Self.statistics(d)
    let o = ExpertBuilderTests.options(.partition, experts: E, topK: k) { $0.granularity = 2; $0.calibratedScale = true }
    let b = try Self.builder(o, d, s)
    let sets = b.neurons!
    var holders = [Int](repeating: 0, count: Self.I)
    for set in sets { for i in set { holders[i] += 1 } }
    func choices(_ n: Int, _ k: Int) -> [[Int]] {
      k == 0 ? [[]] : n < k ? [] : choices(n - 1, k) + choices(n - 1, k - 1).map { $0 + [n - 1] }
    }
    var numerator = 0.0, denominator = 0.0
    for t in 0..<Self.S {
      let a = Array(s.sketch[(t * Self.I)..<((t + 1) * Self.I)])
      let dense = (0..<Self.H).map { h in (0..<Self.I).reduce(0.0) { $0 + Double(d.down[h * Self.I + $1] * a[$1]) } }
      let experts = sets.map { set in
        (0..<Self.H).map { h in set.reduce(0.0) { $0 + Double(d.down[h * Self.I + $1] * a[$1]) / Double(holders[$1]) } }
      }
      for c in choices(E, k) {
        let y = (0..<Self.H).map { h in c.reduce(0.0) { $0 + experts[$1][h] / Double(k) } }
        numerator += zip(y, dense).reduce(0) { $0 + $1.0 * $1.1 }
        denominator += y.reduce(0) { $0 + $1 * $1 }
      }
    }
    let best = Float(numerator / denominator)
    for (e, set) in sets.enumerated() {
      let down = ExpertBuilderTests.expert(b, e, .down)
      for h in 0..<Self.H {
        for (j, i) in set.enumerated() {
          let expected = d.down[h * Self.I + i] / Float(holders[i]) * best
          #expect(abs(down[h * set.count + j] - expected) <= 1e-4 * max(1e-3, abs(expected)))
        }
      }
    }
  }

  // MARK: routers

  @Test(arguments: [1.0, 2.5])
  func kmeansRouterRowsAreCenteredAndScaledToTheSpread(spread: Double) throws {
    let d = ExpertBuilderTests.dense(I: Self.I, H: Self.H)
    let s = Self.statistics(d)
    for select in [UpcycleOptions.PartitionSelect.random, .cluster] {
      let o = ExpertBuilderTests.options(.partition, experts: 4, topK: 2) {
        $0.routerInit = .kmeans; $0.routerSpread = spread; $0.partitionSelect = select
      }
      let r = try Self.builder(o, d, s).router()
      for i in 0..<Self.H {
        let column = (0..<4).reduce(Float(0)) { $0 + r[$1 * Self.H + i] }
        #expect(abs(column) <= 1e-5)
      }
      var total = 0.0
      for t in 0..<Self.S {
        let z = (0..<4).map { e in (0..<Self.H).reduce(0.0) { $0 + Double(s.routerInputs[t * Self.H + $1] * r[e * Self.H + $1]) } }
        let mean = z.reduce(0, +) / 4
        total += z.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / 4
      }
      #expect(abs((total / Double(Self.S)).squareRoot() - spread) <= 1e-4 * spread)
      #expect(try Self.builder(o, d, s).router() == r)
    }
  }

  @Test func routerInitializersNameThemselves() {
    #expect(UpcycleOptions.RouterInit.caseNames == ["normal", "uniform", "zeros", "kmeans", "prompts"])
    #expect(UpcycleOptions.PartitionSelect.caseNames == ["random", "uniform", "importance", "activation", "cluster"])
    #expect(UpcycleOptions.Importance.caseNames == ["l1", "l2", "freq"])
    #expect(UpcycleOptions.DropSelect.caseNames == ["random", "least-important"])
  }

  @Test func absQuantileIsTheNearestRank() {
    let v: [Float] = [-5, 1, -2, 4, 3]
    v.withUnsafeBufferPointer { p in
      #expect(Calibrator.absQuantile(p, 0.5) == 3)
      #expect(Calibrator.absQuantile(p, 0.9) == 5)
      #expect(Calibrator.absQuantile(p, 0.1) == 1)
    }
    #expect(Calibrator.samplePositions(rows: 4, tokens: 100) == [12, 37, 62, 87])
    #expect(Calibrator.samplePositions(rows: 10, tokens: 3) == [0, 1, 2])
  }
}
