#!/bin/bash
# Drop-in for upstream's logcopy entry script (`bash /workspace/run_logcopy.sh` in the Job yaml), for an operator
# who keeps a bash-based logcopy image: the same name, the same environment (CHALLENGE_ID, SUBMISSION_ID,
# TRACK_ID, TEAM_ID, S3_BUCKET, DYNAMODB_SUBMISSIONS_TABLE, EVALAI_AUTH_TOKEN, EVALAI_API_SERVER, LOGS_PERIOD),
# and the work done by `logcopy run`. Our own logcopy image has no shell: there the container's command is the
# binary itself (`command: ["/usr/local/bin/logcopy", "run"]`). Arguments are passed on; see `logcopy run --help`.
#
# logcopy is looked up as $LOGCOPY, then beside this script, then on PATH.
here=$(dirname "${BASH_SOURCE[0]}")
if [[ -n ${LOGCOPY:-} ]]; then
    logcopy=$LOGCOPY
elif [[ -x $here/logcopy ]]; then
    logcopy=$here/logcopy
else
    logcopy=logcopy
fi
exec "$logcopy" run "$@"
