import MoESupport
import MoEFormats
#if canImport(Glibc)
import Glibc
#endif

/// One layer's dense FFN weights in f32, HF layout.
public struct DenseFFN {
  public var intermediate: Int
  public var hidden: Int
  public var gate: [Float]  // [I, H] row-major
  public var up: [Float]    // [I, H]
  public var down: [Float]  // [H, I]

  package func weights(_ p: Projection) -> [Float] {
    switch p { case .gate: return gate; case .up: return up; case .down: return down }
  }
}

/// What calibration data and router prompts give one layer.
public struct LayerData: Sendable {
  public var statistics: LayerStatistics?
  /// Mean router input of each expert's prompts [groups][H], and of its negative prompts.
  public var promptMeans: [[Float]]?
  public var negativePromptMeans: [[Float]]?
  /// Router inputs of the prompts' tokens [n, H].
  public var promptSamples: [Float]?
  public init() {}
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
  /// What calibration and prompts give this layer.
  public let data: LayerData
  /// Neuron indices of each expert (granular/partition); nil = all neurons.
  package let neurons: [[Int]]?
  /// Neurons of the shared expert when it is built from the most frequently
  /// firing ones; nil = a copy of the dense FFN.
  package let sharedNeurons: [Int]?
  let gateUpScale: Float
  let downScale: Float
  let downColumnScales: [[Float]]?

  // Stream purposes.
  static let purposeIndices: UInt64 = 1
  static let purposeValues: UInt64 = 2
  static let purposeRouter: UInt64 = 3
  static let purposePartition: UInt64 = 4

  /// Intermediate size of each routed expert for these options (validated).
  public static func expertSize(options o: UpcycleOptions, intermediate I: Int) -> Int {
    o.method.rule.expertSize(o, intermediate: I - o.sharedFromFrequent)
  }

  public init(options o: UpcycleOptions, layer: Int, dense: DenseFFN, data: LayerData = LayerData()) throws {
    options = o
    self.layer = layer
    self.dense = dense
    self.data = data
    let m = ExpertBuilder.expertSize(options: o, intermediate: dense.intermediate)
    expertSize = m
    // With --shared-from-frequent, the most frequently firing neurons form the
    // shared expert and the routed experts are built from the others.
    var pool = Array(0..<dense.intermediate)
    if o.sharedFromFrequent > 0 {
      guard let stats = data.statistics else {
        throw MoEError.invalid("shared-from-frequent needs calibration statistics (calibration data or a statistics file)")
      }
      let freq = stats.fireFrequency, mag = stats.absMean
      let ranked = pool.sorted { freq[$0] != freq[$1] ? freq[$0] > freq[$1] : mag[$0] != mag[$1] ? mag[$0] > mag[$1] : $0 < $1 }
      let shared = Array(ranked[0..<o.sharedFromFrequent]).sorted()
      sharedNeurons = shared
      let isShared = Set(shared)
      pool = pool.filter { !isShared.contains($0) }
    } else {
      sharedNeurons = nil
    }
    let layout = try o.method.rule.layout(LayerContext(options: o, layer: layer, dense: dense, data: data,
                                                       pool: pool, expertSize: m))
    neurons = layout.neurons
    downColumnScales = layout.downColumnScales
    gateUpScale = layout.gateUpScale
    // A shared expert that copies the dense FFN carries half of the output and
    // the routed experts the other half; one made of its own neurons carries
    // them in full (x2 undoes its zero gate's sigmoid, 1/2).
    downScale = o.sharedExpert && sharedNeurons == nil ? layout.downScale * 0.5 : layout.downScale
  }

  // MARK: Router

  /// Router weight [E, H].
  public func router() throws -> [Float] {
    let E = options.numExperts, H = dense.hidden
    // Granular: one row per virtual group, repeated for the group's G experts.
    let group = options.method.rule.routerGroup(options)
    let rows = try options.routerInit.rule.rows(self, groups: E / group)
    var out = [Float](repeating: 0, count: E * H)
    for g in 0..<(E / group) {
      for r in 0..<group {
        out.replaceSubrange(((g * group + r) * H)..<((g * group + r + 1) * H), with: rows[(g * H)..<((g + 1) * H)])
      }
    }
    return out
  }

  /// The random stream of the layer's router rows.
  func routerStream() -> Rng { Rng(seed: options.seed, stream: [ExpertBuilder.purposeRouter, UInt64(layer)]) }

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
    if p == .down, let columns = downColumnScales?[e] {
      for h in 0..<H { for j in 0..<m { dst[h * m + j] *= columns[j] } }
    }
  }

  /// Intermediate size of the shared expert.
  public var sharedSize: Int { sharedNeurons?.count ?? dense.intermediate }

  /// The shared expert: an exact copy of the dense FFN, or its most
  /// frequently firing neurons (down_proj x2 against the zero gate's 1/2).
  public func sharedExpert(_ p: Projection, into dst: UnsafeMutablePointer<Float>) {
    let H = dense.hidden, I = dense.intermediate
    let w = dense.weights(p)
    guard let idx = sharedNeurons else {
      w.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: $0.count) }
      return
    }
    let m = idx.count
    w.withUnsafeBufferPointer { src in
      if p == .down {
        for h in 0..<H { for j in 0..<m { dst[h * m + j] = 2 * src[h * I + idx[j]] } }
      } else {
        for j in 0..<m { (dst + j * H).update(from: src.baseAddress! + idx[j] * H, count: H) }
      }
    }
  }

  /// Indices of intermediate neurons re-drawn (drop) or perturbed (noise) for expert e, projection p.
  public func perturbedNeurons(_ e: Int, _ p: Projection) -> [Int] {
    let I = dense.intermediate
    let count = min(I, max(0, Int((options.ratio * Double(I)).rounded())))
    if options.dropSelect == .leastImportant, let stats = data.statistics {
      // The same least important neurons in every expert; each expert draws its own values.
      let score = options.importance.scores(stats)
      return Array((0..<I).sorted { score[$0] != score[$1] ? score[$0] < score[$1] : $0 < $1 }[0..<count]).sorted()
    }
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
  package static func importance(_ d: DenseFFN) -> [Double] {
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
