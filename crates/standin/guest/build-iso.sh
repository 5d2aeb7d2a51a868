#!/bin/sh
# guestbox stand-in (NOT Windows): assembles the stand-in install ISO. Runs inside a
# hard-linked copy of the stand-in's Debian root (chroot), with that root's own tools;
# writes only below /.standin-build and never modifies a file in place.
set -eu
B=/.standin-build
L=/usr/local/lib/standin
K=$(ls /lib/modules)
rm -rf "$B"
mkdir -p "$B/iso/boot/grub/i386-pc" "$B/iso/.disk" "$B/iso/EFI/BOOT" "$B/iso/standin" "$B/initrd"

# 1. The initramfs: busybox and the modules that find and mount the medium (CD-ROM on
# AHCI or IDE, the installed disk's ext4) and the root (squashfs + overlay). Uncompressed:
# nothing to decompress under TCG.
cd "$B/initrd"
mkdir -p bin dev proc sys medium lower newroot run modules
cp /bin/busybox bin/busybox
cp "$L/initrd-init" init
: >modules/order
for m in ahci ata_piix sd_mod sr_mod isofs squashfs loop overlay ext4 crc32c_generic; do
    modprobe -S "$K" --show-depends "$m" | while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        name=$(basename "$path")
        grep -qx "$name" modules/order || { cp "$path" "modules/$name"; echo "$name" >>modules/order; }
    done
done
find . | LC_ALL=C sort | busybox cpio -o -H newc >"$B/iso/boot/initrd.img" 2>/dev/null
cd /
cp "/boot/vmlinuz-$K" "$B/iso/boot/vmlinuz"

# 2. The root filesystem, read-only; an overlay makes it writable at boot. Modules no
# Windows machine of guestbox's needs are left out (graphics, sound, wireless, ...).
mksquashfs / "$B/iso/standin/root.sfs" -noappend -no-progress -comp zstd -processors 2 \
    -wildcards \
    -e "proc/*" "sys/*" "dev/*" "run/*" "tmp/*" .standin-build "var/cache/apt/*" "var/lib/apt/lists/*" \
    "lib/modules/*/kernel/sound" "lib/modules/*/kernel/drivers/gpu" \
    "lib/modules/*/kernel/drivers/media" "lib/modules/*/kernel/drivers/net/wireless" \
    "lib/modules/*/kernel/drivers/infiniband" "lib/modules/*/kernel/drivers/bluetooth" \
    "lib/modules/*/kernel/drivers/staging" "lib/modules/*/kernel/drivers/iio" \
    "lib/modules/*/kernel/drivers/hid" "lib/modules/*/kernel/drivers/input/touchscreen" \
    "lib/modules/*/kernel/drivers/isdn" "lib/modules/*/kernel/drivers/net/can" \
    "lib/modules/*/kernel/net/wireless" "lib/modules/*/kernel/net/mac80211" \
    "lib/modules/*/kernel/net/bluetooth" "lib/modules/*/kernel/drivers/usb" \
    "lib/modules/*/kernel/drivers/scsi/qla2xxx" "lib/modules/*/kernel/drivers/scsi/lpfc" \
    "lib/modules/*/kernel/drivers/net/ethernet/mellanox" "lib/modules/*/kernel/drivers/net/ethernet/chelsio" \
    "lib/modules/*/kernel/drivers/net/ethernet/qlogic" "lib/modules/*/kernel/drivers/net/ethernet/broadcom" \
    "lib/modules/*/kernel/fs/xfs" "lib/modules/*/kernel/fs/btrfs" "lib/modules/*/kernel/fs/ocfs2" \
    "lib/modules/*/kernel/fs/gfs2" "lib/modules/*/kernel/fs/f2fs" \
    "usr/share/grub/themes" >/dev/null

# 3. GRUB: BIOS from an El Torito image of its own, UEFI through Debian's signed shim and
# its signed CD GRUB, which looks for /.disk/info and then reads /boot/grub/grub.cfg.
echo "guestbox stand-in Windows install ISO (not Windows)" >"$B/iso/.disk/info"
cat >"$B/iso/boot/grub/grub.cfg" <<'CFG'
# guestbox stand-in (NOT Windows): the "Windows Setup" of the stand-in.
set timeout=0
linux /boot/vmlinuz standin.mode=setup console=ttyS0,115200 quiet loglevel=3 panic=10
initrd /boot/initrd.img
boot
CFG
grub-mkimage -O i386-pc-eltorito -p /boot/grub -o "$B/iso/boot/grub/bios.img" \
    biosdisk iso9660 normal configfile linux search search_label search_fs_file test echo
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$B/iso/boot/grub/i386-pc/"
cp /usr/lib/shim/shimx64.efi.signed "$B/iso/EFI/BOOT/BOOTX64.EFI"
cp /usr/lib/shim/mmx64.efi.signed "$B/iso/EFI/BOOT/mmx64.efi"
cp /usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed "$B/iso/EFI/BOOT/grubx64.efi"
mkfs.vfat -C -n STANDINEFI "$B/iso/boot/grub/efi.img" 8192 >/dev/null
mmd -i "$B/iso/boot/grub/efi.img" ::/EFI ::/EFI/BOOT
mcopy -i "$B/iso/boot/grub/efi.img" "$B/iso/EFI/BOOT/BOOTX64.EFI" "$B/iso/EFI/BOOT/mmx64.efi" \
    "$B/iso/EFI/BOOT/grubx64.efi" ::/EFI/BOOT/

xorriso -as mkisofs -o "$B/standin.iso" -R -J -joliet-long -V STANDIN_WINDOWS \
    -b boot/grub/bios.img -no-emul-boot -boot-load-size 4 -boot-info-table --grub2-boot-info \
    -eltorito-alt-boot -e boot/grub/efi.img -no-emul-boot \
    "$B/iso" 2>&1 | grep -v '^xorriso : UPDATE' || true
[ -s "$B/standin.iso" ]
