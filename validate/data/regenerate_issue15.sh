#!/bin/bash
# Every profile and report of issue 15, from the committed measurements (run from the repository root with
# fabricsim installed). Profiles first: h200x1 and h200x8 derive from the bundled h200x2.
set -ex
F=${FABRICSIM:-fabricsim}
$F calibrate validate/data/h200x2/measured.json hwmodels/profiles/h200x2.json --force --id h200x2-20261123-r2
$F calibrate validate/data/h100x1/measured.json hwmodels/profiles/h100x1.json --force --id h100x1-20261123-r2
$F calibrate validate/data/h200x1/quick/measured.json hwmodels/profiles/h200x1.json --base h200x2 --force --id h200x1-20261204-quick
$F calibrate validate/data/h200x1-workloads hwmodels/profiles/h200x1.json   # issue 14: adds the fitted software costs
$F calibrate validate/data/h200x8-probe/calibration.json hwmodels/profiles/h200x8.json --base h200x2 --force \
  --id h200x8-20261122-probe17 --note "fitted on the 17 probe cases only (12 calibration, 5 held out); the full \
validate run on an 8-GPU machine, when one is lent, replaces this profile"
$F report validate/data/h200x8-probe/calibration.json --no-store --force
$F report validate/data/h200x1/measured.json --no-store --force
$F report validate/data/h200x1/full2/measured.json --no-store --force
$F report validate/data/h200x1/full-workloads-run1/measured.json --no-store --force
$F report validate/data/h200x1/measured.json --profile hwmodels/profiles/h200x2.json \
  --out validate/data/h200x1/report-h200x2-profile --no-store --force
$F report validate/data/h200x2/measured.json --no-store --force
$F report validate/data/h100x1/measured.json --no-store --force
