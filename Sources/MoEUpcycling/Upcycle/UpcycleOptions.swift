import MoEFormats
import MoELayer
import MoESupport

/// What `upcycle` builds; mirrors `moe_upcycle_params` (raw values equal the ABI's enums).
public struct UpcycleOptions: Sendable {
  public enum Method: Int32, Sendable, CaseIterable { case copy = 0, drop, noise, granular, partition }
  public enum RouterInit: Int32, Sendable, CaseIterable { case normal = 0, uniform, zeros, kmeans, prompts }
  public enum Routing: Int32, Sendable, CaseIterable { case softmaxTopKRenorm = 0, softmaxTopK, topKSoftmax }
  public enum Format: Int32, Sendable, CaseIterable { case mixtral = 0, qwen2Moe }
  /// Raw values equal `moe_dtype` (keep = MOE_DTYPE_DEFAULT).
  public enum OutputDType: Int32, Sendable { case keep = -1, f32 = 0, f16 = 1, bf16 = 2 }
  public enum PartitionSelect: Int32, Sendable, CaseIterable { case random = 0, uniform, importance, activation, cluster }
  /// The calibration statistic that ranks neurons: mean |a|, root mean a^2, firing frequency.
  public enum Importance: Int32, Sendable, CaseIterable { case l1 = 0, l2, frequency }
  public enum DropSelect: Int32, Sendable, CaseIterable { case random = 0, leastImportant }
  public enum GranularScaling: Int32, Sendable, CaseIterable { case down = 0, cubeRoot, none }

  public var numExperts = 8
  public var topK = 2
  public var method = Method.copy
  public var ratio = 0.5
  public var sharedIndices = false
  public var noiseStd = 0.02
  public var granularity = 0
  public var granularScaling = GranularScaling.down
  public var partitionSelect = PartitionSelect.random
  public var partitionDisjoint = false
  public var partitionScale = true
  public var layers: String? = nil
  public var routerInit = RouterInit.normal
  public var routerStd = 0.02
  public var sharedExpert = false
  public var routing = Routing.softmaxTopKRenorm
  public var format = Format.mixtral
  public var dtype = OutputDType.keep
  public var seed: UInt64 = 0
  public var force = false
  public var maxShardBytes: UInt64 = 4 << 30
  public var threads = 0
  public var routerAuxLossCoef = 0.02
  /// Calibration data run through the dense model (nil = none).
  public var calibration: CalibrationOptions? = nil
  /// Statistics saved by an earlier calibration (instead of `calibration`).
  public var statisticsPath: String? = nil
  /// Where to save the calibration statistics (nil = not saved).
  public var saveStatisticsPath: String? = nil
  public var importance = Importance.l2
  /// partition: down_proj scales fitted to the dense outputs on the calibration tokens.
  public var calibratedScale = false
  /// The F most frequently firing neurons form the shared expert (0 = off).
  public var sharedFromFrequent = 0
  public var dropSelect = DropSelect.random
  /// router-init prompts: one line per expert; optional negative prompts.
  public var routerPromptsPath: String? = nil
  public var routerNegativePromptsPath: String? = nil
  /// Data-derived routers (kmeans, prompts) are scaled so that the standard
  /// deviation of a token's logits across experts averages this.
  public var routerSpread = 1.0

  public init() {}

  /// Most routed experts per MoE layer.
  public static let maxExperts = 1024

  public var methodName: String { method.rule.name }

  /// Whether building needs calibration statistics.
  public var needsStatistics: Bool {
    method.rule.needsStatistics(self) || routerInit.rule.needsStatistics(self) || sharedFromFrequent > 0
  }

  public var routingName: String {
    switch routing {
    case .softmaxTopKRenorm: return "softmax_topk_renorm"
    case .softmaxTopK: return "softmax_topk"
    case .topKSoftmax: return "topk_softmax"
    }
  }

  /// Routing weights are renormalized over the chosen k (topK-then-softmax is the same function).
  public var renormalizes: Bool { routing != .softmaxTopK }
}

/// Parses a layer selection: "all", "every:N" (layers i with (i+1) % N == 0) or "0,2,5-7".
public func parseLayerSelection(_ spec: String?, numLayers: Int) throws -> [Bool] {
  let text = (spec ?? "all").trimmingSpaces
  guard !text.isEmpty else {
    throw MoEError.invalid("layers is empty; use all (every layer), every:N, or a list like 0,2,5-7")
  }
  if text == "all" { return Array(repeating: true, count: numLayers) }
  if text.hasPrefix("every:") {
    let digits = text.dropFirst(6)
    guard digits.allSatisfy(\.isASCIIDigit), let n = Int(digits), n >= 1 else {
      throw MoEError.invalid("layers '\(text)': every:N needs a positive integer N")
    }
    guard n <= numLayers else {
      throw MoEError.invalid("layers '\(text)' selects no layer (the model has \(numLayers) layers)")
    }
    return (0..<numLayers).map { ($0 + 1) % n == 0 }
  }
  var flags = Array(repeating: false, count: numLayers)
  for part in text.split(separator: ",", omittingEmptySubsequences: false) {
    let item = String(part).trimmingSpaces
    let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
    guard bounds.count == 1 || bounds.count == 2,
          bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }),
          let lo = Int(bounds[0]), let hi = Int(bounds[bounds.count - 1]), lo <= hi else {
      throw MoEError.invalid("layers '\(text)': '\(item)' is not a layer index or range (use all, every:N, or a list like 0,2,5-7)")
    }
    guard lo >= 0, hi < numLayers else {
      throw MoEError.invalid("layers '\(text)': layer \(lo < 0 ? lo : hi) is out of range (the model has \(numLayers) layers, 0..\(numLayers - 1))")
    }
    for l in lo...hi { flags[l] = true }
  }
  guard flags.contains(true) else { throw MoEError.invalid("layers '\(text)' selects no layer") }
  return flags
}

extension String {
  package var trimmingSpaces: String {
    var s = Substring(self)
    while let f = s.first, f == " " { s.removeFirst() }
    while let l = s.last, l == " " { s.removeLast() }
    return String(s)
  }
}

extension UpcycleOptions.Format {
  /// The architecture an MoE model of this output format has.
  package var architecture: Architecture {
    switch self {
    case .mixtral: return .mixtral
    case .qwen2Moe: return .qwen2Moe
    }
  }

  /// Refuses MoE settings the format cannot hold (upcycled and new models
  /// alike): a layer subset (`moeLayers`, one flag per layer), a shared
  /// expert, routing without renormalization; for an upcycled model, the
  /// dense model's attention (`source`, read from `path`).
  package func check(sharedExpert: Bool, renormalizes: Bool, moeLayers: [Bool] = [], source: ModelDescription? = nil,
                     path: String = "") throws {
    let hf = CheckpointLayouts.hf(architecture)
    if hf.everyLayerMoE && moeLayers.contains(false) {
      throw MoEError.unsupported("the \(caseName) format makes every layer MoE; use the qwen2-moe format for a layer subset")
    }
    if sharedExpert && !hf.hasSharedExpert {
      throw MoEError.unsupported("the \(caseName) format has no shared expert; use the qwen2-moe format")
    }
    if !renormalizes && hf.alwaysRenormalizes {
      throw MoEError.unsupported("the \(caseName) format renormalizes the top-k weights; softmax-topk without renormalization needs the qwen2-moe format")
    }
    guard let d = source else { return }
    if d.qkvBias && !hf.qkvBias(architecture) {
      throw MoEError.unsupported("'\(path)' has q/k/v biases (\(d.architecture.rawValue)), which the \(caseName) format cannot hold; use the qwen2-moe format")
    }
    if hf.headDimFromHidden && d.headDim * d.numHeads != d.hiddenSize {
      throw MoEError.unsupported("the \(caseName) format needs head_dim x heads == hidden size (\(d.headDim) x \(d.numHeads) != \(d.hiddenSize))")
    }
  }
}

// MARK: - Names

extension UpcycleOptions.Method: NamedCase {
  /// The method's name, from its implementation (Upcycle/Methods).
  public var caseName: String { rule.name }
}

extension UpcycleOptions.RouterInit: NamedCase {
  /// The initializer's name, from its implementation (Upcycle/Routers).
  public var caseName: String { rule.name }
}

extension UpcycleOptions.Importance: NamedCase {
  public var caseName: String {
    switch self {
    case .l1: return "l1"
    case .l2: return "l2"
    case .frequency: return "freq"
    }
  }
}

extension UpcycleOptions.DropSelect: NamedCase {
  public var caseName: String {
    switch self {
    case .random: return "random"
    case .leastImportant: return "least-important"
    }
  }
}

extension UpcycleOptions.Format: NamedCase {
  public var caseName: String {
    switch self {
    case .mixtral: return "mixtral"
    case .qwen2Moe: return "qwen2-moe"
    }
  }
}

extension UpcycleOptions.PartitionSelect: NamedCase {
  public var caseName: String {
    switch self {
    case .random: return "random"
    case .uniform: return "uniform"
    case .importance: return "importance"
    case .activation: return "activation"
    case .cluster: return "cluster"
    }
  }
}

extension UpcycleOptions.GranularScaling: NamedCase {
  public var caseName: String {
    switch self {
    case .down: return "down"
    case .cubeRoot: return "cube-root"
    case .none: return "none"
    }
  }
}
