//! Socket addresses in the kernel's layout, for connect, accept and sendmsg.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A `sockaddr_storage` and its length.
#[derive(Clone, Copy)]
pub(crate) struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    /// Room for any address, to be filled in by the kernel.
    pub(crate) fn empty() -> SockAddr {
        SockAddr {
            // SAFETY: all-zero is a valid sockaddr_storage.
            storage: unsafe { std::mem::zeroed() },
            len: size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    pub(crate) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    pub(crate) fn len(&self) -> libc::socklen_t {
        self.len
    }

    pub(crate) fn as_mut_ptrs(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        (
            (&mut self.storage as *mut libc::sockaddr_storage).cast(),
            &mut self.len,
        )
    }

    pub(crate) fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    /// Fills in an address with `getsockname` or `getpeername`.
    pub(crate) fn query(
        fd: i32,
        f: unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32,
    ) -> io::Result<SockAddr> {
        let mut a = SockAddr::empty();
        let (p, l) = a.as_mut_ptrs();
        // SAFETY: `p` and `l` describe `a.storage`, which is large enough.
        super::cvt(unsafe { f(fd, p, l) })?;
        Ok(a)
    }

    /// A Unix-domain address for `path`.
    pub(crate) fn unix(path: &Path) -> io::Result<SockAddr> {
        let mut a = SockAddr::empty();
        // SAFETY: sockaddr_un fits in sockaddr_storage, which is aligned for it.
        let un = unsafe {
            &mut *(&mut a.storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_un>()
        };
        un.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() >= un.sun_path.len() || bytes.contains(&0) {
            // An empty path with its NUL would read as the abstract name "".
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unix socket path empty, too long, or containing a NUL byte",
            ));
        }
        for (d, s) in un.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        a.len = (base + bytes.len() + 1) as libc::socklen_t;
        Ok(a)
    }

    /// The address as an IP socket address.
    pub(crate) fn to_std(self) -> io::Result<SocketAddr> {
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let sin = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in>() };
                Ok(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let sin6 = unsafe { &*self.as_ptr().cast::<libc::sockaddr_in6>() };
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not an IPv4 or IPv6 address",
            )),
        }
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        let mut a = SockAddr::empty();
        match addr {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_in fits in, and is aligned within, the storage.
                let sin = unsafe {
                    &mut *(&mut a.storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in>()
                };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                a.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            SocketAddr::V6(v6) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe {
                    &mut *(&mut a.storage as *mut libc::sockaddr_storage)
                        .cast::<libc::sockaddr_in6>()
                };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                sin6.sin6_flowinfo = v6.flowinfo();
                sin6.sin6_scope_id = v6.scope_id();
                a.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
        }
        a
    }
}
