#if canImport(Glibc)
import Glibc
#endif

/// The three projections of a SwiGLU FFN.
public enum Projection: Int, Sendable, CaseIterable {
  case gate = 0, up = 1, down = 2
}

/// One layer's dense FFN weights in f32, HF layout.
public struct DenseFFN {
  public var intermediate: Int
  public var hidden: Int
  public var gate: [Float]  // [I, H] row-major
  public var up: [Float]    // [I, H]
  public var down: [Float]  // [H, I]

  func weights(_ p: Projection) -> [Float] {
    switch p { case .gate: return gate; case .up: return up; case .down: return down }
  }
}

/// Builds the experts and router of one MoE layer from its dense FFN.
/// Every random draw comes from a stream keyed by (seed, purpose, layer, expert,
/// projection), so the output does not depend on order or thread count.
public struct ExpertBuilder {
  public let options: UpcycleOptions
  public let layer: Int
  public let dense: DenseFFN
  /// Intermediate size of each routed expert.
  public let expertSize: Int
  /// Neuron indices of each expert (granular/partition); nil = all neurons.
  let neurons: [[Int]]?
  let gateUpScale: Float
  let downScale: Float

  // Stream purposes.
  static let purposeIndices: UInt64 = 1
  static let purposeValues: UInt64 = 2
  static let purposeRouter: UInt64 = 3
  static let purposePartition: UInt64 = 4

  /// Intermediate size of each routed expert for these options (validated).
  public static func expertSize(options o: UpcycleOptions, intermediate I: Int) -> Int {
    switch o.method {
    case .granular: return I / max(1, o.granularity == 0 ? 1 : o.granularity)
    case .partition: return I / max(1, o.granularity == 0 ? o.numExperts : o.granularity)
    default: return I
    }
  }

  public init(options o: UpcycleOptions, layer: Int, dense: DenseFFN) {
    options = o
    self.layer = layer
    self.dense = dense
    let I = dense.intermediate
    let m = ExpertBuilder.expertSize(options: o, intermediate: I)
    expertSize = m
    var gateUp: Float = 1
    var down: Float = 1
    switch o.method {
    case .granular:
      let G = o.granularity == 0 ? 1 : o.granularity
      neurons = (0..<o.numExperts).map { e in Array(((e % G) * m)..<((e % G + 1) * m)) }
      let scale = o.renormalizes ? Double(G) : Double(o.numExperts * G) / Double(o.topK)
      switch o.granularScaling {
      case .down: down = Float(scale)
      case .cubeRoot:
        gateUp = Float(pow(scale, 1.0 / 3.0))
        down = gateUp
      case .none: break
      }
    case .partition:
      neurons = ExpertBuilder.partition(options: o, layer: layer, dense: dense, size: m)
      if o.partitionScale { down = Float(Double(I) / Double(o.topK * m)) }
    default:
      neurons = nil
    }
    // With a shared expert carrying half of the output, routed experts carry the other half.
    if o.sharedExpert { down *= 0.5 }
    gateUpScale = gateUp
    downScale = down
  }

  // MARK: Router

  /// Router weight [E, H].
  public func router() -> [Float] {
    let E = options.numExperts, H = dense.hidden
    var out = [Float](repeating: 0, count: E * H)
    var rng = Rng(seed: options.seed, stream: [ExpertBuilder.purposeRouter, UInt64(layer)])
    // Granular: one row per virtual group, repeated for the group's G experts.
    let group = options.method == .granular ? max(1, options.granularity) : 1
    for g in 0..<(E / group) {
      var row = [Float](repeating: 0, count: H)
      switch options.routerInit {
      case .zeros: break
      case .normal: for i in 0..<H { row[i] = Float(rng.normal() * options.routerStd) }
      case .uniform:
        let width = options.routerStd * 12.0.squareRoot()
        for i in 0..<H { row[i] = Float((rng.uniform() - 0.5) * width) }
      }
      for r in 0..<group { out.replaceSubrange(((g * group + r) * H)..<((g * group + r + 1) * H), with: row) }
    }
    return out
  }

  // MARK: Experts

  public func shape(_ p: Projection) -> [Int] {
    p == .down ? [dense.hidden, expertSize] : [expertSize, dense.hidden]
  }

  /// Writes expert `e`'s projection `p` into `dst` (shape(p) elements).
  public func expert(_ e: Int, _ p: Projection, into dst: UnsafeMutablePointer<Float>) {
    let H = dense.hidden, I = dense.intermediate, m = expertSize
    let w = dense.weights(p)
    w.withUnsafeBufferPointer { src in
      if let idx = neurons?[e] {
        if p == .down {
          for h in 0..<H { for j in 0..<m { dst[h * m + j] = src[h * I + idx[j]] } }
        } else {
          for j in 0..<m { (dst + j * H).update(from: src.baseAddress! + idx[j] * H, count: H) }
        }
      } else {
        dst.update(from: src.baseAddress!, count: w.count)
      }
    }
    if options.method == .drop || options.method == .noise {
      perturb(e, p, dst)
    }
    let scale = p == .down ? downScale : gateUpScale
    if scale != 1 {
      for i in 0..<(m * H) { dst[i] *= scale }
    }
  }

  /// The shared expert: an exact copy of the dense FFN.
  public func sharedExpert(_ p: Projection, into dst: UnsafeMutablePointer<Float>) {
    let w = dense.weights(p)
    w.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: $0.count) }
  }

  /// Indices of intermediate neurons re-drawn (drop) or perturbed (noise) for expert e, projection p.
  public func perturbedNeurons(_ e: Int, _ p: Projection) -> [Int] {
    let I = dense.intermediate
    let count = min(I, max(0, Int((options.ratio * Double(I)).rounded())))
    let projectionID: UInt64 = options.sharedIndices ? 99 : UInt64(p.rawValue)
    var rng = Rng(seed: options.seed, stream: [ExpertBuilder.purposeIndices, UInt64(layer), UInt64(e), projectionID])
    return rng.sample(count, of: I)
  }

  private func perturb(_ e: Int, _ p: Projection, _ dst: UnsafeMutablePointer<Float>) {
    let H = dense.hidden, I = dense.intermediate
    let selected = perturbedNeurons(e, p)
    guard !selected.isEmpty else { return }
    var rng = Rng(seed: options.seed, stream: [ExpertBuilder.purposeValues, UInt64(layer), UInt64(e), UInt64(p.rawValue)])
    if options.method == .noise {
      let std = options.noiseStd
      if p == .down {
        for h in 0..<H { for i in selected { dst[h * I + i] += Float(rng.normal() * std) } }
      } else {
        for i in selected { for h in 0..<H { dst[i * H + h] += Float(rng.normal() * std) } }
      }
      return
    }
    // Drop: statistics of the selected slice of the original dense weight.
    var sum = 0.0, sumSq = 0.0
    let w = dense.weights(p)
    w.withUnsafeBufferPointer { src in
      if p == .down {
        for h in 0..<H { for i in selected { let v = Double(src[h * I + i]); sum += v; sumSq += v * v } }
      } else {
        for i in selected { for h in 0..<H { let v = Double(src[i * H + h]); sum += v; sumSq += v * v } }
      }
    }
    let n = Double(selected.count * H)
    let mean = sum / n
    let std = max(0, sumSq / n - mean * mean).squareRoot()
    if p == .down {
      for h in 0..<H { for i in selected { dst[h * I + i] = Float(mean + std * rng.normal()) } }
    } else {
      for i in selected { for h in 0..<H { dst[i * H + h] = Float(mean + std * rng.normal()) } }
    }
  }

  // MARK: Partition

  /// Per-neuron importance: L2 norm of the neuron's gate row, up row and down column together.
  static func importance(_ d: DenseFFN) -> [Double] {
    let H = d.hidden, I = d.intermediate
    var score = [Double](repeating: 0, count: I)
    for i in 0..<I {
      var s = 0.0
      for h in 0..<H {
        let g = Double(d.gate[i * H + h]), u = Double(d.up[i * H + h]), w = Double(d.down[h * I + i])
        s += g * g + u * u + w * w
      }
      score[i] = s.squareRoot()
    }
    return score
  }

  static func partition(options o: UpcycleOptions, layer: Int, dense d: DenseFFN, size m: Int) -> [[Int]] {
    let E = o.numExperts, I = d.intermediate
    let scores = o.partitionSelect == .importance ? importance(d) : []
    if o.partitionDisjoint {
      var order: [Int]
      switch o.partitionSelect {
      case .random:
        var rng = Rng(seed: o.seed, stream: [purposePartition, UInt64(layer)])
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
      var rng = Rng(seed: o.seed, stream: [purposePartition, UInt64(layer), UInt64(e)])
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
