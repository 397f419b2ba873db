// GGUF: header, metadata, tensor infos and data layout (GGUFFile over bytes
// held in memory), then what opening it as a checkpoint does (model
// description, validation, tensor presence and shapes), reading every tensor
// (dequantized, Q/K rows reordered), the tokenizer from its metadata, and the
// HF tokenizer files exported from it.

@testable import MoESupport
@testable import MoEFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzGGUF(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOne(data, size) { bytes in
    let g = try GGUFFile(file: MappedFile(copying: bytes, path: "fuzz.gguf"))
    for t in g.tensors {
      expect(t.offset >= 0 && g.dataStart + t.offset + t.byteCount <= size,
             "tensor '\(t.name)' at \(t.offset) (\(t.byteCount) bytes) lies outside the \(size)-byte file")
    }
    // The tokenizer and its export do not depend on the model being valid.
    do {
      let tokenizer = try BPETokenizer(gguf: g)
      exercise(tokenizer, roundTrips: false)
    } catch is MoEError {}
    do {
      let files = try TokenizerExport.build(from: g, maxLength: 2048)
      let text = files.tokenizerJSON.serialized()
      let tokenizer = try BPETokenizer(tokenizerJSON: JSONParser.parse(text, what: "exported tokenizer.json"))
      exercise(tokenizer, roundTrips: false)
    } catch is MoEError {}

    let checkpoint = try Checkpoint(gguf: g)
    try readAllTensors(checkpoint.source)
    _ = checkpoint.parameterCounts()
    _ = checkpoint.dtypeSummary()
    _ = checkpoint.dataBytes
  }
}
