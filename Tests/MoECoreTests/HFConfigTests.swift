import Testing
@testable import MoESupport
@testable import MoEFormats
@testable import MoELayer

/// HFConfig.make: the config.json of every checkpoint the library writes.
@Suite struct HFConfigTests {
  static func parse(_ text: String) throws -> JSON { try JSONParser.parse(text, what: "config") }

  static let llamaSource = #"""
    {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96,
     "max_position_embeddings": 300, "rms_norm_eps": 1e-06, "rope_theta": 500000, "initializer_range": 0.01,
     "attention_dropout": 0, "bos_token_id": 5, "eos_token_id": [7, 8], "pad_token_id": 0, "mlp_bias": false,
     "custom_key": 3, "rope_scaling": {"type": "linear", "factor": 2}, "torch_dtype": "bfloat16"}
    """#

  /// The MoE description the upcycler gives a dense source.
  static func moe(_ d: ModelDescription, _ arch: Architecture, layers: [Bool]) -> ModelDescription {
    var out = d
    out.architecture = arch
    out.moe = MoEDescription(numExperts: 4, topK: 2, expertIntermediateSize: 16,
                             sharedExpertIntermediateSize: arch == .qwen2Moe ? d.intermediateSize : 0, moeLayers: layers)
    return out
  }

  static let routing = HFConfig.Routing(normTopKProb: false, routerAuxLossCoef: 0.02)

  @Test func upcycledMixtralCarriesTheSourceValuesAsWritten() throws {
    let d = try HFConfig.describe(try Self.parse(Self.llamaSource), what: "config")
    let c = try HFConfig.make(Self.moe(d, .mixtral, layers: [true, true]), dtype: .f32, routing: Self.routing)
    #expect(c["architectures"] == .array([.string("MixtralForCausalLM")]) && c["model_type"] == .string("mixtral"))
    #expect(c["intermediate_size"] == .int(16) && c["num_local_experts"] == .int(4) && c["num_experts_per_tok"] == .int(2))
    // Carried exactly (ints of float fields become floats of the same value).
    #expect(c["rms_norm_eps"] == .float(1e-06) && c["initializer_range"] == .float(0.01))
    #expect(c["rope_theta"] == .float(500000) && c["attention_dropout"] == .float(0))
    #expect(c["max_position_embeddings"] == .int(300) && c["bos_token_id"] == .int(5))
    #expect(c["eos_token_id"] == .array([.int(7), .int(8)]) && c["pad_token_id"] == .int(0))
    #expect(c["router_aux_loss_coef"] == .float(0.02) && c["router_jitter_noise"] == .float(0))
    #expect(c["sliding_window"] == .null)
    // Llama-only and unknown keys of the source are not Mixtral's.
    #expect(c["mlp_bias"] == nil && c["custom_key"] == nil && c["attention_bias"] == nil)
    // RoPE both ways; the scaling keeps its (4.x) spelling with float factors.
    #expect(c["rope_scaling"] == .object([("type", .string("linear")), ("factor", .float(2))]))
    #expect(c["rope_parameters"] == .object([("rope_type", .string("linear")), ("rope_theta", .float(500000)),
                                             ("factor", .float(2))]))
    // The dtype of the output, both spellings (not the source's).
    #expect(c["torch_dtype"] == .string("float32") && c["dtype"] == .string("float32"))
    #expect(c.serialized().contains(#""rms_norm_eps":1e-06,"#))
  }

  @Test func upcycledQwen2MoERecordsDenseLayers() throws {
    let d = try HFConfig.describe(try Self.parse(Self.llamaSource), what: "config")
    let c = try HFConfig.make(Self.moe(d, .qwen2Moe, layers: [false, true]), dtype: .bf16, routing: Self.routing)
    #expect(c["model_type"] == .string("qwen2_moe") && c["intermediate_size"] == .int(64))
    #expect(c["moe_intermediate_size"] == .int(16) && c["shared_expert_intermediate_size"] == .int(64))
    #expect(c["mlp_only_layers"] == .array([.int(0)]) && c["norm_topk_prob"] == .bool(false))
    #expect(c["qkv_bias"] == .bool(true) && c["use_sliding_window"] == .bool(false))
    #expect(c["torch_dtype"] == .string("bfloat16") && c["dtype"] == .string("bfloat16"))
    // The described model reads back as the same MoE layout.
    let back = try HFConfig.describe(try Self.parse(c.serialized()), what: "written")
    #expect(back.moe?.moeLayers == [false, true] && back.moe?.expertIntermediateSize == 16)
    #expect(back.rmsNormEps == 1e-06 && back.ropeTheta == 500000)
  }

  @Test func sameArchitectureSourceIsKeptWholeWithFloatsFixed() throws {
    let source = try Self.parse(Self.llamaSource)
    let d = try HFConfig.describe(source, what: "config")
    let c = try HFConfig.make(d, dtype: .f32)
    let keys = try #require(c.objectValue).map(\.0)
    let sourceKeys = try #require(source.objectValue).map(\.0)
    #expect(Array(keys.prefix(sourceKeys.count)) == sourceKeys)
    #expect(Array(keys.dropFirst(sourceKeys.count)) == ["rope_parameters", "dtype"])
    #expect(c["custom_key"] == .int(3) && c["mlp_bias"] == .bool(false) && c["pad_token_id"] == .int(0))
    #expect(c["rope_theta"] == .float(500000) && c["attention_dropout"] == .float(0))
    #expect(c["torch_dtype"] == .string("float32") && c["dtype"] == .string("float32"))
  }

  @Test func ropeParametersOnlySourceGetsTheOlderSpellingsToo() throws {
    let source = try Self.parse(#"""
      {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "vocab_size": 96, "rms_norm_eps": 1e-05,
       "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000, "factor": 8, "low_freq_factor": 1,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
      """#)
    let d = try HFConfig.describe(source, what: "config")
    #expect(d.ropeTheta == 500000)
    let c = try HFConfig.make(d, dtype: .f32)
    #expect(c["rope_theta"] == .float(500000))
    #expect(c["rope_parameters"] == .object([
      ("rope_type", .string("llama3")), ("rope_theta", .float(500000)), ("factor", .float(8)),
      ("low_freq_factor", .float(1)), ("high_freq_factor", .float(4)), ("original_max_position_embeddings", .int(8192))]))
    #expect(c["rope_scaling"] == .object([
      ("rope_type", .string("llama3")), ("factor", .float(8)), ("low_freq_factor", .float(1)),
      ("high_freq_factor", .float(4)), ("original_max_position_embeddings", .int(8192))]))
  }

  @Test func describedModelWithoutSourceIsBuilt() throws {
    let d = ModelDescription(
      architecture: .qwen2, numLayers: 3, hiddenSize: 32, intermediateSize: 48, numHeads: 4, numKVHeads: 2,
      headDim: 8, vocabSize: 50, maxPositionEmbeddings: 128, ropeTheta: 1000000, rmsNormEps: 1e-06,
      tiedEmbeddings: true, qkvBias: true, bosTokenId: nil, eosTokenId: 3, moe: nil, sourceConfig: nil)
    let c = try HFConfig.make(d, dtype: .bf16)
    #expect(c["architectures"] == .array([.string("Qwen2ForCausalLM")]) && c["max_window_layers"] == .int(3))
    #expect(c["rope_theta"] == .float(1000000) && c["rms_norm_eps"] == .float(1e-06))
    #expect(c["initializer_range"] == .float(0.02) && c["attention_dropout"] == .float(0))
    #expect(c["bos_token_id"] == nil && c["eos_token_id"] == .int(3) && c["rope_scaling"] == nil)
    #expect(c["rope_parameters"] == .object([("rope_type", .string("default")), ("rope_theta", .float(1000000))]))
    #expect(c["tie_word_embeddings"] == .bool(true) && c["dtype"] == .string("bfloat16"))
    // An MoE model without routing settings or a source config (read from GGUF) gets the routing
    // it loads with: Mixtral renormalizes, llama.cpp's qwen2moe does not.
    var moe = Self.moe(d, .mixtral, layers: [true, true, true])
    moe.sourceConfig = nil
    let mixtral = try HFConfig.make(moe, dtype: .f32)
    #expect(mixtral["num_local_experts"] != nil && mixtral["router_aux_loss_coef"] == .float(0.02))
    var qwen = Self.moe(d, .qwen2Moe, layers: [true, true, true])
    qwen.sourceConfig = nil
    let q = try HFConfig.make(qwen, dtype: .f32)
    #expect(q["norm_topk_prob"] == .bool(false) && q["router_aux_loss_coef"] == .float(0.001))
    // A description that says MoE but holds no MoE settings is refused.
    var broken = moe
    broken.moe = nil
    #expect(throws: MoEError.self) { try HFConfig.make(broken, dtype: .f32) }
  }

  @Test func architecturesClassNamesRoundTrip() {
    for arch in Architecture.allCases { #expect(Architecture(hfClassName: arch.hfClassName) == arch) }
    #expect(Architecture(hfClassName: "GPT2LMHeadModel") == nil)
    #expect(HFConfig.architectureName(.object([("architectures", .array([.string("Qwen2MoeForCausalLM")]))])) == "qwen2_moe")
  }
}
