// Pieces of an HF checkpoint directory shared by the upcycler and the model
// writer: shard grouping and names, the shard index, and the tokenizer and
// generation side files.

import MoESupport

package enum CheckpointFiles {
  /// Files carried over from an HF source directory.
  package static let sideFileNames = ["generation_config.json", "tokenizer.json", "tokenizer_config.json",
                              "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
                              "added_tokens.json", "chat_template.jinja", "chat_template.json"]

  /// Groups tensors (by byte size, in order) into consecutive shards of at most
  /// `maxBytes`; a larger tensor gets a shard of its own.
  package static func shards(_ sizes: [Int], maxBytes: UInt64) -> [[Int]] {
    var shards: [[Int]] = [[]]
    var shardBytes = 0
    for (i, size) in sizes.enumerated() {
      if !shards[shards.count - 1].isEmpty && UInt64(shardBytes + size) > maxBytes {
        shards.append([])
        shardBytes = 0
      }
      shards[shards.count - 1].append(i)
      shardBytes += size
    }
    return shards
  }

  /// model.safetensors, or model-0000i-of-0000n.safetensors.
  package static func shardFileName(_ index: Int, of count: Int) -> String {
    func pad5(_ n: Int) -> String {
      let s = String(n)
      return String(repeating: "0", count: max(0, 5 - s.count)) + s
    }
    return count == 1 ? "model.safetensors" : "model-\(pad5(index + 1))-of-\(pad5(count)).safetensors"
  }

  /// model.safetensors.index.json's content.
  package static func index(totalBytes: Int, weightMap: [(String, JSON)]) -> JSON {
    .object([
      ("metadata", .object([("total_size", .int(totalBytes))])),
      ("weight_map", .object(weightMap.sorted { $0.0 < $1.0 })),
    ])
  }

  /// Writes `json` (indented, with a final newline); returns the bytes written.
  @discardableResult
  package static func writeJSON(_ json: JSON, _ path: String) throws -> UInt64 {
    let text = json.serialized(indent: 2) + "\n"
    try FileSystem.writeText(text, to: path)
    return UInt64(text.utf8.count)
  }

  /// Tokenizer and generation files: copied from an HF source directory, or
  /// built from GGUF metadata (byte-level BPE only; other GGUF tokenizer models
  /// are left out rather than exported wrongly); generation_config.json from
  /// the bos/eos ids when none came. Returns the bytes of the files it built.
  @discardableResult
  package static func writeSideFiles(into dir: String, directory: String?, gguf: GGUFFile?,
                                     description d: ModelDescription) throws -> UInt64 {
    var written: UInt64 = 0
    if let directory {
      for n in sideFileNames where FileSystem.isRegularFile(FileSystem.join(directory, n)) {
        try FileSystem.copyFile(FileSystem.join(directory, n), FileSystem.join(dir, n))
      }
    } else if let g = gguf, g.value("tokenizer.ggml.model")?.stringValue == "gpt2" {
      let files = try TokenizerExport.build(from: g, maxLength: d.maxPositionEmbeddings)
      written += try writeJSON(files.tokenizerJSON, FileSystem.join(dir, "tokenizer.json"))
      written += try writeJSON(files.tokenizerConfig, FileSystem.join(dir, "tokenizer_config.json"))
      written += try writeJSON(files.specialTokensMap, FileSystem.join(dir, "special_tokens_map.json"))
    }
    let generation = FileSystem.join(dir, "generation_config.json")
    if !FileSystem.exists(generation) {
      var gen: [(String, JSON)] = [("_from_model_config", .bool(true))]
      if let b = d.bosTokenId { gen.append(("bos_token_id", .int(b))) }
      if let e = d.eosTokenId { gen.append(("eos_token_id", .int(e))) }
      written += try writeJSON(.object(gen), generation)
    }
    return written
  }
}
