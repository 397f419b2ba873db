import Testing
@testable import MoESupport
@testable import MoEFormats

/// The checkpoint layouts: names per format, both directions, and the registry.
@Suite struct CheckpointLayoutTests {
  static func description(_ arch: Architecture, shared: Int = 0) -> ModelDescription {
    ModelDescription(
      architecture: arch, numLayers: 2, hiddenSize: 8, intermediateSize: 16, numHeads: 2, numKVHeads: 1,
      headDim: 4, vocabSize: 32, maxPositionEmbeddings: 64, ropeTheta: 10000, rmsNormEps: 1e-6,
      tiedEmbeddings: false, qkvBias: CheckpointLayouts.hf(arch).qkvBias(arch), bosTokenId: nil, eosTokenId: nil,
      moe: arch.isMoE ? MoEDescription(numExperts: 3, topK: 2, expertIntermediateSize: 4,
                                      sharedExpertIntermediateSize: shared, moeLayers: [true, true]) : nil,
      sourceConfig: nil)
  }

  @Test func eachArchitectureHasItsFormat() {
    #expect(CheckpointLayouts.hf(.llama) is HFDenseLayout && CheckpointLayouts.hf(.qwen2) is HFDenseLayout)
    #expect(CheckpointLayouts.hf(.mixtral) is HFMixtralLayout && CheckpointLayouts.hf(.qwen2Moe) is HFQwen2MoeLayout)
    #expect(CheckpointLayouts.gguf(.mistral).name == "llama" && CheckpointLayouts.gguf(.mixtral).name == "llama")
    #expect(CheckpointLayouts.gguf(.qwen2).name == "qwen2" && CheckpointLayouts.gguf(.qwen2Moe).name == "qwen2moe")
    for a in Architecture.allCases {
      #expect(CheckpointLayouts.hf.filter { $0.architectures.contains(a) }.count == 1)
      #expect(CheckpointLayouts.gguf.filter { $0.architectures.contains(a) }.count == 1)
    }
  }

  @Test func namesOfEachFormat() {
    let mixtral = HFMixtralLayout(), qwen = HFQwen2MoeLayout(), dense = HFDenseLayout()
    #expect(mixtral.name(.expertGate, layer: 3, expert: 1) == "model.layers.3.block_sparse_moe.experts.1.w1.weight")
    #expect(mixtral.name(.expertDown, layer: 3, expert: 1) == "model.layers.3.block_sparse_moe.experts.1.w2.weight")
    #expect(mixtral.name(.router, layer: 0) == "model.layers.0.block_sparse_moe.gate.weight")
    #expect(qwen.name(.sharedExpertGate, layer: 2) == "model.layers.2.mlp.shared_expert_gate.weight")
    #expect(qwen.name(.expertsGateUp, layer: 2) == "model.layers.2.mlp.experts.gate_up_proj")
    #expect(dense.name(.query, layer: 1, "bias") == "model.layers.1.self_attn.q_proj.bias")
    #expect(dense.name(.embedding, layer: 5) == "model.embed_tokens.weight")
    #expect(mixtral.name(.ffnDown, layer: 1) == dense.name(.ffnDown, layer: 1))
    #expect(dense.path(.router) == nil && mixtral.path(.sharedGate) == nil)
  }

  /// Every name a format writes reads back as its role, and no two tensors share a name.
  @Test func namesReadBackAsTheirRoles() {
    for arch in Architecture.allCases {
      let d = Self.description(arch, shared: arch == .qwen2Moe ? 6 : 0)
      let hf = d.hf
      let names = hf.tensors(d).map(\.name)
      #expect(Set(names).count == names.count)
      for role in TensorRole.allCases where hf.path(role, expert: 2) != nil {
        #expect(hf.role(of: hf.name(role, layer: 1, expert: 2)) == role)
        #expect(CheckpointLayouts.role(ofHF: hf.name(role, layer: 1, expert: 2)) == role)
      }
    }
  }

  /// File order: attention, then an MoE layer's router, experts in the format's order, the shared expert.
  @Test func tensorsInFileOrder() {
    let d = Self.description(.mixtral)
    let layer0 = d.hf.tensors(d).map(\.name).filter { $0.hasPrefix("model.layers.0.") }
    #expect(layer0.count == 6 + 1 + 3 * 3)
    #expect(layer0[6] == "model.layers.0.block_sparse_moe.gate.weight")
    #expect(layer0[7...9] == ["model.layers.0.block_sparse_moe.experts.0.w1.weight",
                               "model.layers.0.block_sparse_moe.experts.0.w2.weight",
                               "model.layers.0.block_sparse_moe.experts.0.w3.weight"])
    let q = Self.description(.qwen2Moe, shared: 6)
    let shapes = Dictionary(uniqueKeysWithValues: q.hf.tensors(q).map { ($0.name, $0.shape) })
    #expect(shapes["model.layers.1.mlp.shared_expert.down_proj.weight"] == [8, 6])
    #expect(shapes["model.layers.1.mlp.shared_expert_gate.weight"] == [1, 8])
    #expect(shapes["model.layers.1.self_attn.k_proj.bias"] == [4])
  }

  /// GGUF names map to the roles and back, and to the HF names of the architecture's experts.
  @Test func ggufNamesBothWays() {
    for (g, role) in GGUFLayout.blockRoles {
      #expect(GGUFLayout.role(of: "blk.4.\(g).weight")?.role == role)
      #expect(GGUFLayout.ggufName(role, layer: 4) == "blk.4.\(g)")
    }
    #expect(GGUFLayout.hfName("blk.1.ffn_gate_inp_shexp.weight", architecture: "qwen2moe") == "model.layers.1.mlp.shared_expert_gate.weight")
    #expect(GGUFLayout.hfName("blk.1.ffn_gate_inp_shexp.weight", architecture: "llama") == nil)
    #expect(GGUFLayout.permutesQK("llama") && !GGUFLayout.permutesQK("qwen2") && !GGUFLayout.permutesQK("qwen2moe"))
    #expect(CheckpointLayouts.gguf(named: "gpt2") == nil)
  }

  /// The hyperparameters written for an architecture are the ones read back.
  @Test func ggufHyperparametersRoundTrip() throws {
    for (arch, shared) in [(Architecture.llama, 0), (.mixtral, 0), (.qwen2, 0), (.qwen2Moe, 6)] {
      let d = Self.description(arch, shared: shared)
      let layout = CheckpointLayouts.gguf(arch)
      var meta: [(String, GGUFOut)] = [("general.architecture", .string(layout.name))]
      meta += GGUFLayout.hyperparameters(d, layout)
      let bytes = GGUFOut.header(metadata: meta, tensors: [])
      let g = try GGUFFile(file: bytes.withUnsafeBytes { MappedFile(copying: $0, path: "mem.gguf") })
      let back = try GGUFLayout.describe(g)
      #expect(back.architecture == arch)
      #expect(back.numLayers == d.numLayers && back.hiddenSize == d.hiddenSize && back.headDim == d.headDim)
      #expect(back.numKVHeads == d.numKVHeads && back.vocabSize == d.vocabSize && back.qkvBias == d.qkvBias)
      #expect(back.moe?.numExperts == d.moe?.numExperts && back.moe?.topK == d.moe?.topK)
      #expect(back.moe?.expertIntermediateSize == d.moe?.expertIntermediateSize)
      #expect(back.moe?.sharedExpertIntermediateSize == d.moe?.sharedExpertIntermediateSize)
    }
  }
}
