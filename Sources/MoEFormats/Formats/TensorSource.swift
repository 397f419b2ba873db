import MoESupport

/// Where one tensor of a checkpoint lives and how it is stored.
public struct TensorInfo: Sendable {
  public var name: String
  public var dtype: DType
  /// Row-major shape in HF order ([out, in] for linear weights).
  public var shape: [Int]
  public var elementCount: Int
  public var byteCount: Int

  package init(name: String, dtype: DType, shape: [Int], elementCount: Int, byteCount: Int) {
    self.name = name
    self.dtype = dtype
    self.shape = shape
    self.elementCount = elementCount
    self.byteCount = byteCount
  }
}

/// Read access to the tensors of a checkpoint under their HF names.
/// Implementations memory-map their files; reading one tensor touches only its bytes.
public protocol TensorSource: AnyObject {
  /// Tensor names in file order.
  var tensorNames: [String] { get }
  func info(_ name: String) -> TensorInfo?
  /// Decodes (and, for GGUF, dequantizes and re-orders) a tensor into f32,
  /// row-major in HF order. `dst` holds `info.elementCount` floats.
  func readFloat(_ name: String, into dst: UnsafeMutablePointer<Float>) throws
  /// Copies a tensor's stored bytes (`info.byteCount`, in `info.dtype`),
  /// rows in HF order: how quantized blocks are kept as they are. Sources
  /// whose tensors are all plain floats need not implement it.
  func readStored(_ name: String, into dst: UnsafeMutableRawPointer) throws
  /// Lets the page cache drop a tensor's pages once it has been consumed.
  func release(_ name: String)
  /// The stored bytes of a tensor in a read-only file mapping that lives as
  /// long as the source, when it has such bytes aligned to its element size
  /// (else nil: read it instead). The file must not change while they are used.
  func mapped(_ name: String) -> UnsafeRawPointer?
}

extension TensorSource {
  public func mapped(_ name: String) -> UnsafeRawPointer? { nil }

  public func readStored(_ name: String, into dst: UnsafeMutableRawPointer) throws {
    let i = try require(name)
    guard i.dtype == .f32 else { throw MoEError.unsupported("tensor '\(name)': its stored \(i.dtype.name) bytes cannot be read") }
    try readFloat(name, into: dst.assumingMemoryBound(to: Float.self))
  }

  public func require(_ name: String) throws -> TensorInfo {
    guard let i = info(name) else { throw MoEError.notFound("tensor '\(name)' is missing from the checkpoint") }
    return i
  }

  /// Reads a tensor into a new array after checking its shape.
  public func readFloat(_ name: String, shape: [Int]) throws -> [Float] {
    let i = try require(name)
    guard i.shape == shape else {
      throw MoEError.shape("tensor '\(name)' has shape \(i.shape), expected \(shape)")
    }
    var out = [Float](repeating: 0, count: i.elementCount)
    try out.withUnsafeMutableBufferPointer { try readFloat(name, into: $0.baseAddress!) }
    return out
  }
}
