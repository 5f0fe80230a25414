#!/usr/bin/env bash
# Provisions one lab machine, the same on every provider; safe to run again (`vagrant provision`).
#   server (live, backup): the README's deploy steps ("Put it on your two servers"), read from the README
#                          in the synced tree and run word for word, with the lab's stand-ins where a lab
#                          differs from two real servers (listed below), and nginx with the site's config
#   client:                the README's install step, and `lab-load`, the bounded load aimed at the VIP
# usage (as root in the guest): machine.sh server|client NAME LAB_ADDRESS VIP/PREFIX
set -euo pipefail
role=$1 name=$2 lab_address=$3 vip=$4
SRC=/opt/failover-src          # the synced source tree (read-only): the checkout the README's steps run in
SITE=/opt/failover-site        # cluster.yaml and nginx/*.conf (vagrant/site, or $FAILOVER_LAB_SITE)
VENV=/opt/failover             # where the README's install step puts the project
WHEELS=/var/cache/failover/wheels   # baked into the lxc box; absent on public boxes (then PyPI)

# Every deploy step of the README is either run here by `run_step NAME`, in the README's order, or listed
# here with what stands in for it in the lab. tests/vagrant/test_deploy_docs.py fails when this file and
# the README drift apart.
STEPS_DONE_ELSEWHERE=(
    cluster-file  # the site's cluster.yaml (synced to /opt/failover-site), installed below
    key           # the Vagrantfile makes the lab's key on the host, once per lab (.vagrant/failover/)
    copy          # Vagrant's file provisioner brings that key to both servers; cluster.yaml is synced
    vip           # below: the lab's interface (eth1), `arping -D` as the "nobody answers" check
    dry-run       # vagrant/rehearse.py, on live, with --json
    swap          # vagrant/rehearse.py, on live, with --json, under client load
    upgrade       # vagrant/rehearse.py: `systemctl reboot` of live
    unswap        # vagrant/rehearse.py, on live, with --json
)

say() { echo "[provision $name] $*"; }
die() { echo "[provision $name] ERROR: $*" >&2; exit 1; }

run_step() {
    local step=$1 commands
    commands=$(python3 "$SRC/vagrant/provision/deploy_steps.py" "$SRC/README.md" "$step") \
        || die "README deploy step $step: not found in $SRC/README.md"
    say "README step $step: $(printf '%s\n' "$commands" | head -1)"
    (cd "$SRC" && bash -euo pipefail -c "$commands") || die "README deploy step $step failed"
}

# --- Debian packages: only those dpkg says are missing (none on the lab's own box) ------------------
missing=()
while read -r pkg; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done < <(grep -v '^#' "$SRC/vagrant/provision/packages" | grep .)
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the project ----------------------------------------------------------------------------------
# The lxc guests reach no package index: pip takes the box's wheelhouse (its own variables, so the
# README's command stays as it is).
if [ -d "$WHEELS" ]; then
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELS
    say "pip installs offline, from $WHEELS"
fi
run_step install

if [ "$role" = client ]; then
    cat >/usr/local/bin/lab-load <<EOF
#!/bin/sh
# Bounded client load aimed at the VIP; see python -m failover.lab.client --help.
# e.g.  lab-load --duration-s 60 --out /tmp/load.json
exec $VENV/bin/python -m failover.lab.client --target ${vip%/*} "\$@"
EOF
    chmod 755 /usr/local/bin/lab-load
    say "client ready: lab-load --duration-s N --out FILE"
    exit 0
fi

# --- server: nginx with the site's config ----------------------------------------------------------
rm -f /etc/nginx/sites-enabled/default
shopt -s nullglob
site_confs=("$SITE"/nginx/*.conf)
[ ${#site_confs[@]} -gt 0 ] || die "no $SITE/nginx/*.conf: put your site's nginx config there"
for conf in "${site_confs[@]}"; do
    install -m 644 "$conf" "/etc/nginx/sites-enabled/$(basename "$conf")"
done
nginx -t -q || die "nginx -t failed with $SITE/nginx/*.conf"
systemctl enable -q nginx
systemctl reload-or-restart nginx

# --- cluster-file, key, copy: the lab's stand-ins ---------------------------------------------------
install -m 644 "$SITE/cluster.yaml" /etc/failover/cluster.yaml
read -r key_file iface vip_ip home <<<"$("$VENV/bin/python" - "$lab_address" <<'EOF'
import sys
from failover.config import load_config
c = load_config("/etc/failover/cluster.yaml")
me = [n for n in c.nodes if str(n.address) == sys.argv[1]]
if not me:
    sys.exit(f"no node in cluster.yaml has this machine's lab address {sys.argv[1]}")
print(c.auth.key_file, me[0].interface, c.vip.address.ip, int(me[0].home))
EOF
)" || die "cluster.yaml does not fit this machine"
install -m 600 /tmp/failover-cluster.key "$key_file"
rm -f /tmp/failover-cluster.key
ip -4 -o addr show dev "$iface" 2>/dev/null | grep -q " $lab_address/" \
    || die "$lab_address is not on $iface (the interface cluster.yaml names); interfaces: $(ip -br -4 addr | tr '\n' ';')"

run_step sysctl

# --- vip: the lab's stand-in; the home node takes the VIP once if nobody holds it -------------------
if [ "$home" = 1 ] && ! ip -o addr show | grep -q " $vip_ip/"; then
    # arping -D exits 0 when nobody answers for the address.
    if arping -D -q -c 2 -w 3 -I "$iface" "$vip_ip"; then
        say "VIP $vip on $iface (home node, nobody holds it)"
        ip addr add "$vip" dev "$iface"
    else
        say "VIP $vip_ip is already held by another machine; left there"
    fi
fi

run_step check
# A second provisioning run brings new code: the install step restarted the agent if it ran.
run_step start
run_step status
