// powergrad C ABI: the C names of the arguments, handed to the C++ API's validation so that a
// failure's message names what a C caller filled in (problem->rows, outputs->dlogits,
// desc->tensors[i], ...). Not installed.
#pragma once

#include "powergrad/bucket.hpp"
#include "powergrad/xent.hpp"

namespace powergrad_capi {

inline constexpr powergrad::detail::XentArgNames kXentCNames = {
    "problem->device",     "problem->rows",       "problem->cols",        "problem->ld",
    "problem->col_offset", "problem->total_cols", "problem->alpha",       "problem->label_smoothing",
    "problem->reduction",  "problem->logits",     "problem->targets",     "problem->targets",
    "problem->target_ld",  "problem->bad_target_count", "upstream->scale", "upstream->values",
    "outputs->loss",       "outputs->lse",        "outputs->lse_alpha",   "outputs->dlogits",
    "outputs->ld_dlogits", "dlogits",             "ld_dlogits",           "saved_lse_alpha",
    "out",                 "ld_out",              "scale",                "row_scale",
    "stats",               "merged",              "pg_xent_workspace_bytes()", "problem->weight",
    "problem->z_loss_scale", "problem->softcap",  "outputs->z_loss",      "outputs->argmax",
    "outputs->correct"};

inline constexpr powergrad::detail::BucketArgNames kBucketCNames = {
    "desc->device", "desc->tensors", "desc->count", "desc->units", "pg_bucket_plan_build", "pg_bucket_plan_bytes()",
    "pg_bucket_workspace_bytes()"};

}  // namespace powergrad_capi
