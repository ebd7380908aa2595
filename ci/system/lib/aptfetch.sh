# Shared by ci/system/qatzip.sh, qemu.sh and qemu-hw.sh (sourced, not run): a throw-away apt
# configuration for fetching another Debian release's packages or sources. It reads and writes only
# its own folder's sources, lists and cache: the system's apt state stays as it is.

# The Debian mirror the system's own sources name (deb.debian.org when they name none).
debian_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# private_apt DIR TYPE SUITE: DIR/sources.list with one line (TYPE deb or deb-src, SUITE's main from
# debian_mirror, signed by Debian's archive keyring), DIR/apt.conf that uses only it and DIR's lists
# and cache, and APT_CONFIG exported to it (unset it afterwards, or call this in a subshell).
private_apt() {
    local dir=$1 type=$2 suite=$3
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial"
    echo "$type [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) $suite main" \
        >"$dir/sources.list"
    cat >"$dir/apt.conf" <<CONF
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$dir/lists";
Dir::Cache "$dir/cache";
Acquire::Languages "none";
APT::Sandbox::User "root";
CONF
    export APT_CONFIG="$dir/apt.conf"
}
