// Shared by every fuzz target (each target is this file, its own file and the
// instrumented core modules; see scripts/fuzz.sh).
//
// A target refuses bad input the way the library does: by throwing MoEError.
// Anything else is a finding: a trap (force-unwrap, index out of range,
// overflow), another error type, a memory error (AddressSanitizer), an
// allocation over the limit, a hang, or a broken property checked with
// `expect`.

#if canImport(Glibc)
import Glibc
#endif
@testable import MoEFormats
@testable import MoESupport

/// FUZZ_VERBOSE=1: print whether each input was accepted or why it was refused
/// (for checking what seeds reach).
let verbose = getenv("FUZZ_VERBOSE") != nil

/// Runs `body` on one input; a thrown MoEError is the expected refusal.
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) -> CInt {
  let bytes = UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size)
  do {
    try body(bytes)
    if verbose { print("accepted") }
  } catch let error as MoEError {
    if verbose { print("refused: \(error.message)") }
  } catch {
    fatalError("error of an unexpected type \(type(of: error)): \(error)")
  }
  return 0
}

/// A property every accepted input must have; a violation is a finding.
func expect(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
  if !condition() { fatalError("property violated: \(message())") }
}

/// Reads fields from fuzz bytes; past the end every read gives zeros.
struct FuzzReader {
  let bytes: UnsafeRawBufferPointer
  var pos = 0

  init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

  var remaining: Int { bytes.count - pos }

  mutating func u8() -> UInt8 {
    guard pos < bytes.count else { return 0 }
    defer { pos += 1 }
    return bytes[pos]
  }

  mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
  mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
  mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }
  mutating func bool() -> Bool { u8() & 1 == 1 }

  /// One of `cases`, chosen by a byte.
  mutating func pick<T>(_ cases: [T]) -> T { cases[Int(u8()) % cases.count] }

  /// `count` bytes (fewer at the end) as text; invalid UTF-8 is repaired.
  mutating func string(_ count: Int) -> String {
    let n = max(0, min(count, remaining))
    defer { pos += n }
    return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + n)]), as: UTF8.self)
  }
}

/// Texts every tokenizer target encodes: ASCII words, contractions, digits,
/// whitespace runs, non-ASCII letters and symbols, control characters and
/// U+FFFD, and strings that look like special tokens.
let sampleTexts = [
  "", " ", "Hello, world!", "it's 12345 o'clock\n\n  x", "  \t\n", "naïve café — 東京 😀",
  "<|im_start|>user\nhi<|im_end|>", "<s></s><unk>", "a\u{0}b\u{7f}\u{FFFD}", "'s'll've're'd'm't",
]

/// Reads every tensor of `source` as f32. Accepted tensors lie inside the
/// input and hold at most 2 elements per byte (4-bit blocks), so the buffers
/// are bounded by the input size.
func readAllTensors(_ source: TensorSource) throws {
  for name in source.tensorNames {
    guard let info = source.info(name) else { fatalError("tensor '\(name)' is listed but has no info") }
    var out = [Float](repeating: 0, count: max(1, info.elementCount))
    try out.withUnsafeMutableBufferPointer { try source.readFloat(name, into: $0.baseAddress!) }
    source.release(name)
  }
}

/// Encodes and decodes `sampleTexts` and `extra` with `tokenizer`; checks ids
/// are in range and, where the tokenizer can represent every byte,
/// that decoding gives the text back.
func exercise(_ tokenizer: BPETokenizer, extra: [String] = [], roundTrips: Bool) {
  for text in sampleTexts + extra {
    for (addSpecial, parseSpecial) in [(true, true), (false, false)] {
      let ids = tokenizer.encode(text, addSpecial: addSpecial, parseSpecial: parseSpecial)
      for id in ids {
        expect(id >= 0 && Int(id) < tokenizer.vocabSize, "id \(id) outside 0..<\(tokenizer.vocabSize) for '\(text)'")
      }
      let back = tokenizer.decode(ids, skipSpecial: false)
      if roundTrips && !addSpecial {
        expect(back == text, "'\(text)' encodes to \(ids), which decodes to '\(back)'")
      }
      _ = tokenizer.decode(ids, skipSpecial: true)
    }
  }
  // Ids from anywhere (negative, huge) must be ignored, not trusted.
  _ = tokenizer.decode([-1, Int32.max, Int32(tokenizer.vocabSize), 0], skipSpecial: true)
  _ = tokenizer.tokenBytes(Int32(tokenizer.vocabSize))
  _ = tokenizer.isSpecial(-5)
}
