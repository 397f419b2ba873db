// safetensors: the header (length prefix, JSON, dtype/shape/offset checks,
// tiling of the data section), then reading every tensor through
// SafetensorsSource from the bytes held in memory, and reading the file as
// calibration statistics.

@testable import MoESupport
@testable import MoEFormats
@testable import MoEUpcycling

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafetensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOne(data, size) { bytes in
    let (entries, dataStart, _) = try Safetensors.parseHeader(bytes, path: "fuzz.safetensors")
    var total = 0
    for e in entries {
      expect(e.begin >= 0 && e.end >= e.begin && dataStart + e.end <= size,
             "tensor '\(e.info.name)' [\(e.begin), \(e.end)) lies outside the \(size)-byte file")
      total += e.end - e.begin
    }
    expect(dataStart + total == size, "accepted entries cover \(total) of \(size - dataStart) data bytes")

    let source = try SafetensorsSource(file: MappedFile(copying: bytes, path: "fuzz.safetensors"))
    expect(source.tensorNames.count == entries.count, "source lists \(source.tensorNames.count) of \(entries.count) tensors")
    try readAllTensors(source)
    // As calibration statistics: refused with a reason, or every layer's arrays of the stated sizes.
    if let stats = try? CalibrationStatistics.load(source: source, path: "fuzz.safetensors") {
      for l in stats.layers {
        expect(l.absMean.count == stats.intermediate && l.sketch.count == stats.sampleRows * stats.intermediate
                 && l.routerInputs.count == stats.sampleRows * stats.hidden,
               "statistics of inconsistent sizes were accepted")
      }
    }

    // The writer's header for the same tensors must parse back to the same layout.
    let tensors = entries.sorted { $0.begin < $1.begin }.map { ($0.info.name, $0.info.dtype, $0.info.shape) }
    var file = Safetensors.headerBytes(tensors: tensors, metadata: [("format", "pt")])
    let headerSize = file.count
    file += [UInt8](repeating: 0, count: total)
    let again = try file.withUnsafeBytes { try Safetensors.parseHeader($0, path: "rewritten.safetensors") }
    expect(again.dataStart == headerSize && again.entries.count == entries.count,
           "rewritten header parses to \(again.entries.count) tensors at \(again.dataStart)")
  }
}
