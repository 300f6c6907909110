// powergrad C++ API: argument types of the PGT linear cross-entropy (see linear_xent.hpp for the op,
// docs/design.md §2.6 for the math).
#pragma once

#include <cstddef>
#include <cstdint>

#include "powergrad/config.hpp"
#include "powergrad/types.hpp"
#include "powergrad/xent_types.hpp"  // ClassTargets, DenseTargets, Upstream

POWERGRAD_NS_BEGIN

// One linear cross-entropy problem: logits z = hidden weight^T + bias, never materialised as a
// whole, and the cross-entropy contract of docs/design.md §2.1 on z.
template <class T, class Targets>
struct LinearXentProblem {
  const T* hidden = nullptr;  // [rows x hidden_dim], row stride ld_hidden
  int64_t rows = 0;
  int64_t hidden_dim = 0;
  int64_t ld_hidden = 0;      // 0 means hidden_dim
  const T* weight = nullptr;  // [vocab x weight_dim], row stride ld_weight (a torch Linear's weight)
  int64_t vocab = 0;
  int64_t weight_dim = 0;     // columns of weight; 0 means hidden_dim, anything else must equal it
  int64_t ld_weight = 0;      // 0 means hidden_dim
  const T* bias = nullptr;    // optional, [bias_len]
  int64_t bias_len = 0;       // 0 means vocab, anything else must equal it
  Targets targets{};          // ClassTargets<int32_t|int64_t> [rows] or DenseTargets<T> [rows x vocab]
  float alpha = 1.f;          // PGT exponent, finite and >= 0 (alpha = 1: ordinary gradient)
  float label_smoothing = 0.f;
  Reduction reduction = Reduction::kMean;
  // Optional, CUDA backend only: counts rows whose class index is out of range (docs/design.md §8).
  int32_t* bad_target_count = nullptr;
  // Split form (a vocabulary-sharded weight, docs/design.md §2.6): these `vocab` rows of weight (and
  // of bias, class_weight, dense targets) are the global classes [vocab_offset, vocab_offset + vocab)
  // of total_vocab; class indices stay global. Only linear_xent_shard_stats / _shard_apply accept a
  // proper shard. Defaults: the whole vocabulary.
  int64_t vocab_offset = 0;
  int64_t total_vocab = 0;    // 0 means vocab
  // Options of the cross-entropy (docs/design.md §2.5), off by default. `weight` is the classifier,
  // so the class weights are `class_weight`.
  const float* class_weight = nullptr;  // [vocab] floats in the problem's memory, finite and >= 0
  float z_loss_scale = 0.f;             // lambda >= 0: adds lambda * lse^2 per row
  float softcap = 0.f;                  // c > 0: every logit z becomes c * tanh(z / c); 0 = off
};

// Element type of a weight or bias gradient output.
enum class GradType : int { kWeightType = 0, kFloat32 = 1 };

// Outputs. Every pointer is optional. dweight / dbias are written (accumulate = false) or added
// to (accumulate = true: gradient accumulation, a weight tied with an input embedding); either
// way the sum over row chunks is kept in fp32 and rounded once to the output type.
template <class T>
struct LinearXentOutputs {
  float* loss = nullptr;      // kMean/kSum: one value; kNone: rows values (0 for ignored rows)
  T* dhidden = nullptr;       // [rows x hidden_dim], row stride ld_dhidden; always written
  int64_t ld_dhidden = 0;     // 0 means hidden_dim
  void* dweight = nullptr;    // [vocab x hidden_dim] of T or float (dweight_type), row stride ld_dweight
  int64_t ld_dweight = 0;     // 0 means hidden_dim
  GradType dweight_type = GradType::kWeightType;
  bool accumulate_dweight = false;
  void* dbias = nullptr;      // [vocab] of T or float (dbias_type)
  GradType dbias_type = GradType::kWeightType;
  bool accumulate_dbias = false;
  // Outputs of the options (docs/design.md §2.5).
  float* z_loss = nullptr;    // the z-loss part of `loss`, reduced as `loss`
  int64_t* argmax = nullptr;  // rows values: first class of the row's maximum logit (global index)
  int32_t* correct = nullptr; // rows values, class targets: 1 when argmax equals the target, else 0
};

POWERGRAD_NS_END
