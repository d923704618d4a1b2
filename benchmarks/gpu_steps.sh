# Helpers of the time-boxed GPU scripts (sourced; needs $W, the work folder, and $OUT, where results.tgz goes):
#   pack               tar $W into $OUT/results.tgz (atomically)
#   step NAME S CMD... run CMD with a cap of S seconds, log to $W/NAME.log, record its seconds and exit code
# and a background packer every 20 s ($PACKER), so a run cut short still returns what it finished.
pack() { tar czf "$OUT/.results.tmp" -C "$W" . 2>/dev/null && mv "$OUT/.results.tmp" "$OUT/results.tgz"; }
(while sleep 20; do pack; done) &
PACKER=$!
step() {
    local name=$1 cap=$2; shift 2
    local t0=$(date +%s)
    echo "=== $name (cap ${cap}s) $(date -u +%T)"
    timeout -s INT -k 10 "$cap" "$@" > "$W/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$W/steps.txt"
    tail -n 5 "$W/$name.log" | cut -c1-300
}
