// config.json: the JSON parser and writer, and reading an HF config into a
// ModelDescription (validated, then the tensor lists of its layout and the
// parameter counts a checkpoint reader computes from it).

@testable import MoESupport
@testable import MoEFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOne(data, size) { bytes in
    let json = try JSONParser.parse(bytes, what: "config.json")

    // Writing and reading back is stable (compared as text: NaN != NaN).
    for indent in [0, 2] {
      let text = json.serialized(indent: indent)
      let again = try JSONParser.parse(text, what: "serialized config.json")
      expect(again.serialized(indent: indent) == text, "JSON does not survive writing and reading back: \(text)")
    }

    let d = try HFConfig.describe(json, what: "config.json")
    try d.validate(what: "config.json")
    if let moe = d.moe {
      expect(moe.moeLayers.count == d.numLayers, "\(moe.moeLayers.count) MoE layer flags for \(d.numLayers) layers")
    }
    let layout = CheckpointLayouts.hf(d.architecture)
    for l in Set([0, d.numLayers - 1]) {
      _ = layout.attentionTensors(d, layer: l)
      _ = layout.denseFFN(layer: l)
    }
    _ = d.embedShape
    _ = d.parameterCounts()
  }
}
