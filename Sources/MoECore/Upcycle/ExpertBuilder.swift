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
    o.method.rule.expertSize(o, intermediate: I)
  }

  public init(options o: UpcycleOptions, layer: Int, dense: DenseFFN) {
    options = o
    self.layer = layer
    self.dense = dense
    let m = ExpertBuilder.expertSize(options: o, intermediate: dense.intermediate)
    expertSize = m
    let layout = o.method.rule.layout(o, layer: layer, dense: dense, expertSize: m)
    neurons = layout.neurons
    gateUpScale = layout.gateUpScale
    // With a shared expert carrying half of the output, routed experts carry the other half.
    downScale = o.sharedExpert ? layout.downScale * 0.5 : layout.downScale
  }

  // MARK: Router

  /// Router weight [E, H].
  public func router() -> [Float] {
    let E = options.numExperts, H = dense.hidden
    var out = [Float](repeating: 0, count: E * H)
    var rng = Rng(seed: options.seed, stream: [ExpertBuilder.purposeRouter, UInt64(layer)])
    // Granular: one row per virtual group, repeated for the group's G experts.
    let group = options.method.rule.routerGroup(options)
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
    options.method.rule.adjust(self, expert: e, p, dst)
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

  /// The random stream of the values drop and noise draw for expert e, projection p.
  func valueStream(expert e: Int, _ p: Projection) -> Rng {
    Rng(seed: options.seed, stream: [ExpertBuilder.purposeValues, UInt64(layer), UInt64(e), UInt64(p.rawValue)])
  }

  // MARK: Statistics

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
}
