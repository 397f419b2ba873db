#if canImport(Glibc)
import Glibc
#endif

/// Partition upcycling: each expert holds I/G of the dense FFN's neurons,
/// chosen at random, uniformly spread, or by weight-norm importance (sampled
/// without replacement, or the top ones dealt round-robin with `disjoint`, so
/// that no neuron is in two experts); down_proj is rescaled by I / (k I/G) so
/// the routed output keeps the dense output's scale.
struct PartitionMethod: UpcycleMethod {
  var name: String { "partition" }

  func groups(_ o: UpcycleOptions) -> Int { o.granularity == 0 ? o.numExperts : o.granularity }

  func validate(_ o: UpcycleOptions, intermediate I: Int) throws {
    let G = groups(o)
    guard I % G == 0 else { throw MoEError.invalid("granularity \(G) does not divide the FFN size \(I) (partition experts have I/G neurons)") }
    if o.partitionDisjoint && o.numExperts > G {
      throw MoEError.invalid("disjoint partition needs experts (\(o.numExperts)) <= granularity (\(G)) so that E x I/G <= I")
    }
  }

  func expertSize(_ o: UpcycleOptions, intermediate I: Int) -> Int { I / max(1, groups(o)) }

  func layout(_ o: UpcycleOptions, layer: Int, dense: DenseFFN, expertSize m: Int) -> ExpertLayout {
    var out = ExpertLayout(neurons: Self.partition(options: o, layer: layer, dense: dense, size: m))
    if o.partitionScale { out.downScale = Float(Double(dense.intermediate) / Double(o.topK * m)) }
    return out
  }

  func record(_ o: UpcycleOptions) -> [(String, JSON)] {
    [("granularity", .int(groups(o))), ("partition_select", .string(o.partitionSelect.caseName)),
     ("partition_disjoint", .bool(o.partitionDisjoint))]
  }

  /// The neurons of each of layer `layer`'s experts.
  static func partition(options o: UpcycleOptions, layer: Int, dense d: DenseFFN, size m: Int) -> [[Int]] {
    let E = o.numExperts, I = d.intermediate
    let scores = o.partitionSelect == .importance ? ExpertBuilder.importance(d) : []
    if o.partitionDisjoint {
      var order: [Int]
      switch o.partitionSelect {
      case .random:
        var rng = Rng(seed: o.seed, stream: [ExpertBuilder.purposePartition, UInt64(layer)])
        order = rng.permutation(I)
        return (0..<E).map { e in Array(order[(e * m)..<((e + 1) * m)]).sorted() }
      case .uniform:
        return (0..<E).map { e in (0..<m).map { e + E * $0 } }
      case .importance:
        order = Array(0..<I).sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        return (0..<E).map { e in (0..<m).map { order[e + E * $0] }.sorted() }
      }
    }
    return (0..<E).map { e in
      var rng = Rng(seed: o.seed, stream: [ExpertBuilder.purposePartition, UInt64(layer), UInt64(e)])
      switch o.partitionSelect {
      case .random:
        return rng.sample(m, of: I)
      case .uniform:
        return (0..<m).map { j in Int((Double(j) + Double(e) / Double(E)) * Double(I) / Double(m)) }
      case .importance:
        // Weighted sampling without replacement (Efraimidis-Spirakis keys).
        var keys: [(Double, Int)] = []
        keys.reserveCapacity(I)
        for i in 0..<I {
          let w = max(scores[i], 1e-30)
          keys.append((log(max(rng.uniform(), 1e-300)) / w, i))
        }
        keys.sort { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 < $1.1 }
        return keys[0..<m].map { $0.1 }.sorted()
      }
    }
  }
}
