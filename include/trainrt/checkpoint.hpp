// Checkpoints: named tensors in the safetensors format (PyTorch, Hugging Face and JAX read it),
// written atomically, and a checkpoint directory holding model weights plus the StateDicts of
// the optimizer, scheduler, GradScaler, DataLoader and trainer.
//
// safetensors file: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
//    "__metadata__": {"key": "value"}}
// padded with spaces to a multiple of 8, then the data buffer (offsets are relative to it).
// The loader checks everything and throws trainrt::Error naming the file and the problem.
//
// Checkpoint directory (see save_checkpoint):
//   model.safetensors   the weights; __metadata__ holds "format": "pt" and the user metadata
//   state.safetensors   the StateDicts: tensors named "<section>/<key>", numbers and strings
//                       in __metadata__ as "scalar:<section>/<key>" / "string:<section>/<key>"
//   manifest.json       written last: format, version, size and CRC-32 of both files
//
//   trainrt::CheckpointContents c;
//   c.model["fc1.weight"] = w;
//   c.states["optimizer"] = opt.state_dict();
//   trainrt::save_checkpoint("runs/last", c);
//   trainrt::CheckpointContents back = trainrt::load_checkpoint("runs/last");
#pragma once

#include <cstddef>
#include <map>
#include <string>

#include "trainrt/device.hpp"
#include "trainrt/export.hpp"
#include "trainrt/state_dict.hpp"
#include "trainrt/tensor.hpp"

namespace trainrt {

/// Named tensors and the string metadata of a safetensors file.
struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

/// Writes `tensors` (any device; copied to the host) and `metadata` as a safetensors file,
/// atomically (see write_file_atomic). Names must be non-empty and not "__metadata__".
TRAINRT_API void save_safetensors(const std::string& path,
                                  const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

/// Reads a safetensors file, every tensor placed on `device`. Throws trainrt::Error naming the
/// file and the problem when the header size, JSON, a dtype, a shape, the data offsets
/// (out of range, overlapping, leaving gaps or trailing bytes) or a name (duplicate) is bad.
TRAINRT_API SafetensorsFile load_safetensors(const std::string& path,
                                             Device device = Device::cpu());

/// Writes `size` bytes to `path` so that a reader sees the old file or the new one, never a
/// part: a temporary file in the same directory, fsync, rename over `path`, fsync of the
/// directory.
TRAINRT_API void write_file_atomic(const std::string& path, const void* data, std::size_t size);

/// What a checkpoint holds. `states` keys are section names (letters, digits, '_', '-', '.');
/// the Trainer uses "optimizer", "scheduler", "scaler", "data_loader" and "trainer".
struct CheckpointContents {
  std::map<std::string, Tensor> model;
  std::map<std::string, StateDict> states;
  /// Free-form strings stored with the weights (model.safetensors __metadata__); the key
  /// "format" is reserved.
  std::map<std::string, std::string> metadata;
};

/// Saves a checkpoint directory at `path`. The files are written into a hidden staging
/// directory beside `path` (each one fsynced, manifest.json last), which then replaces `path`
/// in one atomic step (renameat2 RENAME_EXCHANGE; a plain rename where `path` does not exist),
/// and the parent directory is fsynced. A crash at any point leaves the previous checkpoint at
/// `path` loadable. An existing `path` is replaced only if it is a checkpoint directory (it
/// holds manifest.json, or nothing); anything else is an error. Staging directories left by an
/// earlier crash are removed.
TRAINRT_API void save_checkpoint(const std::string& path, const CheckpointContents& contents);

/// Loads a checkpoint directory, every tensor placed on `device`. Verifies the manifest (a save
/// that did not finish has none), the size and CRC-32 of each file, and each file's contents.
TRAINRT_API CheckpointContents load_checkpoint(const std::string& path,
                                               Device device = Device::cpu());

}  // namespace trainrt
