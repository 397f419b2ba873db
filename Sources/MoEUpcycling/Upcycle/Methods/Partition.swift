import MoESupport
#if canImport(Glibc)
import Glibc
#endif

/// Partition upcycling: each expert holds I/G of the dense FFN's neurons,
/// chosen at random, uniformly spread, by weight-norm importance, by
/// activation importance over calibration data (MoE Jetpack), or grouped by
/// co-activation (`cluster`, MoEfication-style). Importance selections sample
/// without replacement in proportion to the score, or deal the top ones
/// round-robin with `disjoint`, so that no neuron is in two experts.
/// down_proj is rescaled by I / (k I/G) so the routed output keeps the dense
/// output's scale; `cluster` (every neuron in exactly one expert) scales by G,
/// so that routing a token to all experts with equal weights gives exactly
/// the dense FFN.
package struct PartitionMethod: UpcycleMethod {
  package var name: String { "partition" }

  package func groups(_ o: UpcycleOptions) -> Int { o.granularity == 0 ? o.numExperts : o.granularity }

  package func needsStatistics(_ o: UpcycleOptions) -> Bool {
    o.partitionSelect == .activation || o.partitionSelect == .cluster || o.calibratedScale
  }

  package func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    let G = groups(o)
    guard I % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the FFN size \(I) (partition experts have I/G neurons)") }
    if o.partitionDisjoint && o.numExperts > G {
      throw MoEError.invalid("disjoint partition needs experts (\(o.numExperts)) <= granularity (\(G)) so that E x I/G <= I")
    }
    if o.partitionSelect == .cluster && G != o.numExperts {
      throw MoEError.invalid("partition-select cluster puts every neuron in exactly one expert, so the granularity must equal the number of experts (\(o.numExperts)), got \(G)")
    }
  }

  package func expertSize(_ o: UpcycleOptions, intermediate I: Int) -> Int { I / max(1, groups(o)) }

  package func layout(_ c: LayerContext) throws -> ExpertLayout {
    let o = c.options
    let sets = try Self.partition(c)
    var out = ExpertLayout(neurons: sets)
    if o.partitionScale {
      out.downScale = o.partitionSelect == .cluster
        ? Float(groups(o)) : Float(Double(c.pool.count) / Double(o.topK * c.expertSize))
    }
    if o.calibratedScale {
      guard let stats = c.data.statistics else {
        throw MoEError.invalid("calibrated-scale needs calibration statistics (calibration data or a statistics file)")
      }
      (out.downScale, out.downColumnScales) = Self.calibratedScales(c, sets: sets, stats: stats)
    }
    return out
  }

  package func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    var fields: [(String, JSON)] = [("granularity", .int(groups(o))), ("partition_select", .string(o.partitionSelect.caseName)),
                                    ("partition_disjoint", .bool(o.partitionDisjoint || o.partitionSelect == .cluster))]
    if o.partitionSelect == .activation { fields.append(("importance", .string(o.importance.caseName))) }
    fields.append(("partition_scale", .string(o.calibratedScale ? "calibrated" : o.partitionScale ? "formula" : "none")))
    return fields
  }

  /// The neurons of each of a layer's experts, drawn from the context's pool.
  package static func partition(_ c: LayerContext) throws -> [[Int]] {
    let o = c.options, E = o.numExperts, pool = c.pool, n = pool.count, m = c.expertSize, layer = c.layer
    // Positions 0 ..< n in the pool, mapped to neuron indices at the end.
    func neurons(_ positions: [[Int]]) -> [[Int]] { positions.map { $0.map { pool[$0] }.sorted() } }
    var scores: [Double] = []
    switch o.partitionSelect {
    case .importance:
      let all = ExpertBuilder.importance(c.dense)
      scores = pool.map { all[$0] }
    case .activation, .cluster:
      guard let stats = c.data.statistics else {
        throw MoEError.invalid("partition-select \(o.partitionSelect.caseName) needs calibration statistics (calibration data or a statistics file)")
      }
      if o.partitionSelect == .cluster { return neurons(cluster(c, stats)) }
      let all = o.importance.scores(stats)
      scores = pool.map { all[$0] }
    case .random, .uniform: break
    }
    if o.partitionDisjoint {
      switch o.partitionSelect {
      case .random:
        var rng = Rng(seed: o.seed, stream: [ExpertBuilder.purposePartition, UInt64(layer)])
        let order = rng.permutation(n)
        return neurons((0..<E).map { e in Array(order[(e * m)..<((e + 1) * m)]) })
      case .uniform:
        return neurons((0..<E).map { e in (0..<m).map { e + E * $0 } })
      case .importance, .activation, .cluster:
        let order = Array(0..<n).sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        return neurons((0..<E).map { e in (0..<m).map { order[e + E * $0] } })
      }
    }
    return neurons((0..<E).map { e in
      var rng = Rng(seed: o.seed, stream: [ExpertBuilder.purposePartition, UInt64(layer), UInt64(e)])
      switch o.partitionSelect {
      case .random:
        return rng.sample(m, of: n)
      case .uniform:
        return (0..<m).map { j in Int((Double(j) + Double(e) / Double(E)) * Double(n) / Double(m)) }
      case .importance, .activation, .cluster:
        // Weighted sampling without replacement (Efraimidis-Spirakis keys).
        var keys: [(Double, Int)] = []
        keys.reserveCapacity(n)
        for i in 0..<n {
          let w = max(scores[i], 1e-30)
          keys.append((log(max(rng.uniform(), 1e-300)) / w, i))
        }
        keys.sort { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 < $1.1 }
        return keys[0..<m].map { $0.1 }
      }
    })
  }

  /// The calibrated down_proj scales: each neuron's column divided by the
  /// number of experts holding it (so under uniform random routing, where an
  /// expert is chosen with probability k/E and weighs 1/k, every neuron's
  /// expected weight is the same), times the one factor s that minimizes the
  /// expected squared error sum_t E||s y_moe(t) - y_dense(t)||^2 over the
  /// sampled calibration tokens, y_dense being the output of the pool's neurons.
  static func calibratedScales(_ c: LayerContext, sets: [[Int]], stats: LayerStatistics) -> (Float, [[Float]]) {
    let o = c.options, E = sets.count, k = min(o.topK, E), H = c.dense.hidden, I = c.dense.intermediate
    var holders = [Int](repeating: 0, count: I)
    for s in sets { for i in s { holders[i] += 1 } }
    let columns = sets.map { s in s.map { 1 / Float(holders[$0]) } }
    // down_proj's columns as rows: downT [I, H].
    var downT = [Float](repeating: 0, count: I * H)
    for h in 0..<H { for i in 0..<I { downT[i * H + h] = c.dense.down[h * I + i] } }
    let S = stats.sampleRows
    let chosen = Double(k) / Double(E), weight = 1 / Double(k)
    let pair = E > 1 ? Double(k * (k - 1)) / Double(E * (E - 1)) : 0
    var numerator = 0.0, denominator = 0.0
    var target = [Float](repeating: 0, count: H), sum = [Float](repeating: 0, count: H)
    var expert = [Float](repeating: 0, count: H)
    downT.withUnsafeBufferPointer { d in
      for t in 0..<S {
        let a = stats.sketch[(t * I)..<((t + 1) * I)]
        for h in 0..<H { target[h] = 0; sum[h] = 0 }
        for i in c.pool {
          let v = a[a.startIndex + i]
          for h in 0..<H { target[h] += v * d[i * H + h] }
        }
        var squares = 0.0, cross = 0.0
        for (e, s) in sets.enumerated() {
          for h in 0..<H { expert[h] = 0 }
          for (j, i) in s.enumerated() {
            let v = a[a.startIndex + i] * columns[e][j]
            for h in 0..<H { expert[h] += v * d[i * H + h] }
          }
          var sq = 0.0, dot = 0.0
          for h in 0..<H {
            sq += Double(expert[h]) * Double(expert[h])
            dot += Double(expert[h]) * Double(target[h])
            sum[h] += expert[h]
          }
          squares += sq
          cross += dot
        }
        var total = 0.0
        for h in 0..<H { total += Double(sum[h]) * Double(sum[h]) }
        numerator += chosen * weight * cross
        denominator += weight * weight * (chosen * squares + pair * (total - squares))
      }
    }
    let scale = denominator > 0 && numerator > 0 ? numerator / denominator : 1
    return (Float(scale), columns)
  }

  /// Balanced spherical k-means of the pool's neurons, each neuron a vector of
  /// its |activation| over the sampled tokens: E groups of I/E neurons that
  /// fire together (positions in the pool).
  package static func cluster(_ c: LayerContext, _ stats: LayerStatistics) -> [[Int]] {
    let I = c.dense.intermediate, S = stats.sampleRows, n = c.pool.count
    var points = [Float](repeating: 0, count: n * S)
    for (p, i) in c.pool.enumerated() {
      for t in 0..<S { points[p * S + t] = abs(stats.sketch[t * I + i]) }
    }
    let unit = KMeans.normalizedRows(points, rows: n, dim: S)
    var rng = Rng(seed: c.options.seed, stream: [ExpertBuilder.purposePartition, UInt64(c.layer), 0x636C_7573])
    return KMeans.balanced(unit, rows: n, dim: S, k: c.options.numExperts, rng: &rng)
  }
}
