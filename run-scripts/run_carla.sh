#!/bin/bash
# Drop-in for upstream's simulator entry script (`bash /home/carla/run_carla.sh` in the Job yaml): the same name,
# the same environment (CARLA_PORT, NVIDIA_VISIBLE_DEVICES, DISPLAY), and the work done by our supervisor, which
# starts ./CarlaUE4.sh from the current folder (the image's WORKDIR, /home/carla) on its GPU, waits for its RPC
# port, watches it and its agent through the marker files in /tmp/status and restarts the pair in place after a
# crash. Arguments are passed on (e.g. `-- /path/to/CarlaUE4.sh` for another launcher); see `supervisor
# simulator --help` for every setting.
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
exec "$supervisor" simulator "$@"
