#!/bin/bash
# Drop-in for upstream's agent entry script (`bash /workspace/leaderboard/run_leaderboard.sh` in the Job yaml,
# run inside the participant's own image): the same name, the same environment (CARLA_PORT, TEAM_AGENT,
# TEAM_CONFIG, CHALLENGE_TRACK_CODENAME, ROUTES, ROUTES_SUBSET, REPETITIONS, RESUME, NVIDIA_VISIBLE_DEVICES),
# and the work done by our static supervisor, which upstream's init container copies into the leaderboard
# volume beside this script (it needs nothing from the participant's image). It waits for its simulator, runs
# the leaderboard evaluator with upstream's arguments, watches it for crashes and hangs, and resumes the
# unfinished routes after a restart. Arguments are passed on; see `supervisor agent --help`.
#
# The supervisor is looked up as $SUPERVISOR, then beside this script, then on PATH.
here=$(dirname "${BASH_SOURCE[0]}")
if [[ -n ${SUPERVISOR:-} ]]; then
    supervisor=$SUPERVISOR
elif [[ -x $here/supervisor ]]; then
    supervisor=$here/supervisor
else
    supervisor=supervisor
fi
exec "$supervisor" agent "$@"
