import MoESupport

/// Architectures the library reads.
public enum Architecture: String, CaseIterable, Sendable {
  case llama, mistral, qwen2, mixtral
  case qwen2Moe = "qwen2_moe"

  public var isMoE: Bool { self == .mixtral || self == .qwen2Moe }

  /// The transformers model class of a checkpoint (config.json's `architectures`).
  public var hfClassName: String {
    switch self {
    case .llama: return "LlamaForCausalLM"
    case .mistral: return "MistralForCausalLM"
    case .qwen2: return "Qwen2ForCausalLM"
    case .mixtral: return "MixtralForCausalLM"
    case .qwen2Moe: return "Qwen2MoeForCausalLM"
    }
  }

  public init?(hfClassName: String) {
    guard let arch = Architecture.allCases.first(where: { $0.hfClassName == hfClassName }) else { return nil }
    self = arch
  }
}

/// MoE-specific dimensions of a checkpoint.
public struct MoEDescription: Sendable {
  public var numExperts: Int
  public var topK: Int
  public var expertIntermediateSize: Int
  public var sharedExpertIntermediateSize: Int
  /// true for each layer whose FFN is MoE.
  public var moeLayers: [Bool]

  package init(numExperts: Int, topK: Int, expertIntermediateSize: Int, sharedExpertIntermediateSize: Int,
               moeLayers: [Bool]) {
    self.numExperts = numExperts
    self.topK = topK
    self.expertIntermediateSize = expertIntermediateSize
    self.sharedExpertIntermediateSize = sharedExpertIntermediateSize
    self.moeLayers = moeLayers
  }
}

/// The one in-memory description every checkpoint format maps to.
public struct ModelDescription: Sendable {
  public var architecture: Architecture
  public var numLayers: Int
  public var hiddenSize: Int
  /// Dense FFN size (for dense layers).
  public var intermediateSize: Int
  public var numHeads: Int
  public var numKVHeads: Int
  public var headDim: Int
  public var vocabSize: Int
  public var maxPositionEmbeddings: Int
  public var ropeTheta: Double
  public var rmsNormEps: Double
  public var tiedEmbeddings: Bool
  public var qkvBias: Bool
  public var bosTokenId: Int?
  public var eosTokenId: Int?
  public var moe: MoEDescription?
  /// The source config.json (HF sources), carried over for fields not modelled here.
  public var sourceConfig: JSON?

  package init(architecture: Architecture, numLayers: Int, hiddenSize: Int, intermediateSize: Int, numHeads: Int,
               numKVHeads: Int, headDim: Int, vocabSize: Int, maxPositionEmbeddings: Int, ropeTheta: Double,
               rmsNormEps: Double, tiedEmbeddings: Bool, qkvBias: Bool, bosTokenId: Int?, eosTokenId: Int?,
               moe: MoEDescription?, sourceConfig: JSON?) {
    self.architecture = architecture
    self.numLayers = numLayers
    self.hiddenSize = hiddenSize
    self.intermediateSize = intermediateSize
    self.numHeads = numHeads
    self.numKVHeads = numKVHeads
    self.headDim = headDim
    self.vocabSize = vocabSize
    self.maxPositionEmbeddings = maxPositionEmbeddings
    self.ropeTheta = ropeTheta
    self.rmsNormEps = rmsNormEps
    self.tiedEmbeddings = tiedEmbeddings
    self.qkvBias = qkvBias
    self.bosTokenId = bosTokenId
    self.eosTokenId = eosTokenId
    self.moe = moe
    self.sourceConfig = sourceConfig
  }

  /// Most layers a checkpoint may declare (readers check it before sizing per-layer arrays).
  public static let maxLayers = 100_000

  /// Checks internal consistency; throws with the offending field.
  public func validate(what: String) throws {
    func positive(_ v: Int, _ name: String) throws {
      guard v > 0 else { throw MoEError.format("\(what): \(name) must be positive (got \(v))") }
    }
    try positive(numLayers, "num_hidden_layers")
    try positive(hiddenSize, "hidden_size")
    try positive(numHeads, "num_attention_heads")
    try positive(numKVHeads, "num_key_value_heads")
    try positive(headDim, "head_dim")
    try positive(vocabSize, "vocab_size")
    guard numLayers <= ModelDescription.maxLayers, hiddenSize <= 1 << 20, vocabSize <= 1 << 24, numHeads <= 1 << 14 else {
      throw MoEError.format("\(what): absurd dimensions (layers \(numLayers), hidden \(hiddenSize), vocab \(vocabSize))")
    }
    guard numHeads % numKVHeads == 0 else {
      throw MoEError.format("\(what): num_attention_heads \(numHeads) is not a multiple of num_key_value_heads \(numKVHeads)")
    }
    if let moe {
      guard moe.numExperts > 0, moe.topK > 0, moe.topK <= moe.numExperts else {
        throw MoEError.format("\(what): invalid MoE settings (experts \(moe.numExperts), top-k \(moe.topK))")
      }
      guard moe.moeLayers.count == numLayers else {
        throw MoEError.format("\(what): \(moe.moeLayers.count) MoE layer flags for \(numLayers) layers")
      }
      try positive(moe.expertIntermediateSize, "the expert intermediate size")
      guard moe.sharedExpertIntermediateSize >= 0 else {
        throw MoEError.format("\(what): shared_expert_intermediate_size must not be negative (got \(moe.sharedExpertIntermediateSize))")
      }
    } else {
      try positive(intermediateSize, "intermediate_size")
    }
    // Every tensor size and count derived from the description must fit in Int.
    guard countParameters() != nil else {
      throw MoEError.format("\(what): absurd dimensions: the parameter count overflows (hidden \(hiddenSize), head_dim \(headDim), intermediate \(intermediateSize), vocab \(vocabSize))")
    }
  }

  // MARK: Tensor names (HF)

  /// The prefix of layer `l`'s tensor names in HF checkpoints (HFDenseLayout).
  public static func layerPrefix(_ l: Int) -> String { HFDenseLayout.layerPrefix(l) }

  public var embedShape: [Int] { [vocabSize, hiddenSize] }

  /// Parameter counts (total, active per token) computed from the description;
  /// Int.max for a description too large to count (`validate` refuses those).
  public func parameterCounts() -> (total: Int, active: Int) {
    countParameters() ?? (.max, .max)
  }

  /// Parameter counts, or nil when one overflows Int (or the MoE layer flags do not match the layers).
  func countParameters() -> (total: Int, active: Int)? {
    var overflow = false
    func mul(_ values: Int...) -> Int {
      values.reduce(1) { let (r, o) = $0.multipliedReportingOverflow(by: $1); overflow = overflow || o; return r }
    }
    func add(_ values: Int...) -> Int {
      values.reduce(0) { let (r, o) = $0.addingReportingOverflow($1); overflow = overflow || o; return r }
    }
    let H = hiddenSize
    let q = mul(numHeads, headDim), kv = mul(numKVHeads, headDim)
    var attn = add(mul(2, H), mul(q, H, 2), mul(kv, H, 2))
    if qkvBias { attn = add(attn, q, mul(2, kv)) }
    let embed = add(mul(vocabSize, H), H, tiedEmbeddings ? 0 : mul(vocabSize, H))
    let denseFFN = mul(3, H, intermediateSize)
    var total = add(embed, mul(numLayers, attn))
    var active = total
    if let moe {
      guard moe.moeLayers.count == numLayers else { return nil }
      let moeCount = moe.moeLayers.filter { $0 }.count
      let expert = mul(3, H, moe.expertIntermediateSize)
      let shared = moe.sharedExpertIntermediateSize > 0 ? add(mul(3, H, moe.sharedExpertIntermediateSize), H) : 0
      let router = mul(moe.numExperts, H)
      total = add(total, mul(moeCount, add(router, mul(moe.numExperts, expert), shared)),
                  mul(numLayers - moeCount, denseFFN))
      active = add(active, mul(moeCount, add(router, mul(moe.topK, expert), shared)),
                   mul(numLayers - moeCount, denseFFN))
    } else {
      total = add(total, mul(numLayers, denseFFN))
      active = add(active, mul(numLayers, denseFFN))
    }
    return overflow ? nil : (total, active)
  }
}
