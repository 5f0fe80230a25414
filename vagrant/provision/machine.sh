#!/usr/bin/env bash
# Provisions one lab machine, the same on every provider; safe to run again (`vagrant provision`).
#   server (live, backup): nginx with the site's config, the project, /etc/failover/cluster.yaml and its
#                          key, the agent as the systemd unit configs/failover-agent.service; the home
#                          node takes the VIP if nobody holds it (as an operator does once, by hand)
#   client:                the project, and `lab-load`, the bounded load generator aimed at the VIP
# usage (as root in the guest): machine.sh server|client NAME LAB_ADDRESS VIP/PREFIX
set -euo pipefail
role=$1 name=$2 lab_address=$3 vip=$4
SRC=/opt/failover-src          # the synced source tree (read-only)
SITE=/opt/failover-site        # cluster.yaml and nginx/*.conf (vagrant/site, or $FAILOVER_LAB_SITE)
VENV=/opt/failover             # the project's virtualenv; /usr/local/bin/failover points into it
WHEELS=/var/cache/failover/wheels   # baked into the lxc box; absent on public boxes (then PyPI)
BOUND=60                       # seconds any wait below may take

say() { echo "[provision $name] $*"; }
die() { echo "[provision $name] ERROR: $*" >&2; exit 1; }

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

# --- the project, from the synced tree ------------------------------------------------------------
# pip builds in the source directory, so it gets a copy: the synced tree is the operator's checkout.
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./vagrant --exclude=./build \
    --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$build" -xf -
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
pip_from=()
[ -d "$WHEELS" ] && pip_from=(--no-index --find-links "$WHEELS")
say "pip install the project into $VENV${pip_from:+ (offline, from $WHEELS)}"
"$VENV/bin/pip" install -q --disable-pip-version-check "${pip_from[@]}" "$build"
ln -sfn "$VENV/bin/failover" /usr/local/bin/failover

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

# --- server: ARP settings the agent's drain needs --------------------------------------------------
cat >/etc/sysctl.d/60-failover.conf <<'EOF'
# failover: answer ARP only for addresses on the receiving interface and never use a lo address as an
# ARP source, so the old holder's drain copy of the VIP (on lo) stays silent.
net.ipv4.conf.all.arp_ignore = 1
net.ipv4.conf.all.arp_announce = 2
EOF
sysctl -q -p /etc/sysctl.d/60-failover.conf

# --- nginx with the site's config ------------------------------------------------------------------
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

# --- the cluster file and its key ------------------------------------------------------------------
install -d -m 700 /etc/failover
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

# --- the VIP starts on its home node, as an operator puts it there once --------------------------------
if [ "$home" = 1 ] && ! ip -o addr show | grep -q " $vip_ip/"; then
    # arping -D exits 0 when nobody answers for the address.
    if arping -D -q -c 2 -w 3 -I "$iface" "$vip_ip"; then
        say "VIP $vip on $iface (home node, nobody holds it)"
        ip addr add "$vip" dev "$iface"
    else
        say "VIP $vip_ip is already held by another machine; left there"
    fi
fi

# --- the agent, as the unit a real deployment uses ------------------------------------------------
install -m 644 "$SRC/configs/failover-agent.service" "$SRC/configs/failover-agent@.service" /etc/systemd/system/
systemctl daemon-reload
systemctl enable -q failover-agent.service
# restart, not start: a second provisioning run brings new code. Type=notify: returns once READY=1.
timeout "$BOUND" systemctl restart failover-agent.service \
    || { journalctl -u failover-agent --no-pager -n 30 >&2; die "failover-agent did not become ready"; }
for _ in $(seq 1 $((BOUND * 2))); do
    failover status >/dev/null 2>&1 && break
    sleep 0.5
done
failover status || die "failover status does not answer"
