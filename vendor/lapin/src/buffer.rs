use crate::parsing::ParsingContext;
use amq_protocol::frame::{BackToTheBuffer, GenError, GenResult, WriteContext};
use futures_io::{AsyncRead, AsyncWrite};
use std::{
    cmp,
    io::{self, IoSlice, IoSliceMut},
    pin::Pin,
    task::{Context, Poll},
};

#[derive(Debug, PartialEq, Clone)]
pub(crate) struct Buffer {
    memory: Vec<u8>,
    capacity: usize,
    position: usize,
    end: usize,
    available_data: usize,
}

pub(crate) struct Checkpoint {
    end: usize,
    // pushfleet patch: the amount of data is recorded too. Working it out from `end` alone
    // is ambiguous when a write filled the whole ring (end back where it was): a frame too
    // large for an empty buffer was then kept, half-written, instead of rolled back.
    available_data: usize,
    backwards: bool,
}

impl Buffer {
    pub(crate) fn with_capacity(capacity: usize) -> Buffer {
        Buffer {
            memory: vec![0; capacity],
            capacity,
            position: 0,
            end: 0,
            available_data: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.position = 0;
        self.end = 0;
        self.available_data = 0;
    }

    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            end: self.end,
            available_data: self.available_data,
            backwards: true,
        }
    }

    /// Goes back (or, with `backwards` unset, forward again) to the state of `checkpoint`.
    /// Only writes happen between a checkpoint and its rollback, never a `consume`.
    pub(crate) fn rollback(&mut self, checkpoint: Checkpoint) {
        let _ = checkpoint.backwards;
        self.end = checkpoint.end;
        self.available_data = checkpoint.available_data;
    }

    pub(crate) fn grow(&mut self, new_size: usize) -> bool {
        if self.capacity >= new_size {
            return false;
        }

        let old_capacity = self.capacity;
        let growth = new_size - old_capacity;

        self.memory.resize(new_size, 0);
        self.capacity = new_size;

        if self.end <= self.position && self.available_data > 0 {
            // We have data and the "tail" was at the beginning of the buffer.
            // We need to move it in the new end.
            let (old, new) = self.memory.split_at_mut(old_capacity);
            if self.end <= growth {
                // There is enough room in the new end for this whole "tail".
                // (pushfleet patch: copy into the tail's length only, and wrap `end` when the
                // tail fills the new end exactly; this used to panic on a length mismatch.)
                new[..self.end].copy_from_slice(&old[..self.end]);
                self.end = (self.end + old_capacity) % self.capacity;
            } else {
                // Fill the new end with as much data as we can.
                new.copy_from_slice(&old[..growth]);
                // We still have [growth..old_end] to move into [0..new_end]
                // copy_within handles the overlap correctly, if any.
                self.memory.copy_within(growth..self.end, 0);
                // We also update the end pointer to the right location.
                self.end -= growth;
            }
        }

        true
    }

    /// The buffer's size (pushfleet patch: the I/O loop grows buffers on demand).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn available_data(&self) -> usize {
        self.available_data
    }

    pub(crate) fn available_space(&self) -> usize {
        self.capacity - self.available_data
    }

    pub(crate) fn consume(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_data());
        self.position += cnt;
        self.position %= self.capacity;
        self.available_data -= cnt;
        cnt
    }

    pub(crate) fn fill(&mut self, count: usize) -> usize {
        let cnt = cmp::min(count, self.available_space());
        self.end += cnt;
        self.end %= self.capacity;
        self.available_data += cnt;
        cnt
    }

    pub(crate) fn poll_write_to<T: AsyncWrite + ?Sized>(
        &self,
        cx: &mut Context<'_>,
        writer: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        if self.available_data() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end > self.position {
            writer.poll_write(cx, &self.memory[self.position..self.end])
        } else {
            writer.poll_write_vectored(
                cx,
                &[
                    IoSlice::new(&self.memory[self.position..]),
                    IoSlice::new(&self.memory[..self.end]),
                ],
            )
        }
    }

    pub(crate) fn poll_read_from<T: AsyncRead + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        reader: Pin<&mut T>,
    ) -> Poll<io::Result<usize>> {
        if self.available_space() == 0 {
            Poll::Ready(Ok(0))
        } else if self.end >= self.position {
            let (start, end) = self.memory.split_at_mut(self.end);
            reader.poll_read_vectored(
                cx,
                &mut [
                    IoSliceMut::new(&mut *end),
                    IoSliceMut::new(&mut start[..self.position]),
                ][..],
            )
        } else {
            reader.poll_read(cx, &mut self.memory[self.end..self.position])
        }
    }

    pub(crate) fn offset(&self, buf: ParsingContext<'_>) -> usize {
        let dataptr = self.memory[self.position..].as_ptr() as usize;
        let bufptr = buf.as_ptr() as usize;

        if dataptr < bufptr {
            bufptr - dataptr
        } else {
            let start = &self.memory[..0];
            let startptr = start.as_ptr() as usize;
            bufptr + self.capacity - self.position - startptr
        }
    }

    pub(crate) fn parsing_context(&self) -> ParsingContext<'_> {
        if self.available_data() == 0 {
            self.memory[self.end..self.end].into()
        } else if self.end > self.position {
            self.memory[self.position..self.end].into()
        } else {
            [&self.memory[self.position..], &self.memory[..self.end]].into()
        }
    }
}

impl io::Write for &mut Buffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let amt = if self.available_space() == 0 {
            0
        } else if self.end >= self.position {
            let mut space = &mut self.memory[self.end..];
            let mut amt = space.write(data)?;
            if amt == self.capacity - self.end {
                let mut space = &mut self.memory[..self.position];
                amt += space.write(&data[amt..])?;
            }
            amt
        } else {
            let mut space = &mut self.memory[self.end..self.position];
            space.write(data)?
        };
        self.fill(amt);
        Ok(amt)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl BackToTheBuffer for &mut Buffer {
    fn reserve_write_use<
        Tmp,
        Gen: Fn(WriteContext<Self>) -> Result<(WriteContext<Self>, Tmp), GenError>,
        Before: Fn(WriteContext<Self>, Tmp) -> GenResult<Self>,
    >(
        s: WriteContext<Self>,
        reserved: usize,
        generator: &Gen,
        before: &Before,
    ) -> Result<WriteContext<Self>, GenError> {
        if s.write.available_space() < reserved {
            return Err(GenError::BufferTooSmall(
                reserved - s.write.available_space(),
            ));
        }
        let start = s.write.checkpoint();
        s.write.fill(reserved);
        generator(s).and_then(|(s, tmp)| {
            let mut end = s.write.checkpoint();
            end.backwards = false;
            s.write.rollback(start);
            #[allow(clippy::manual_inspect)]
            before(s, tmp).map(|s| {
                s.write.rollback(end);
                s
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::frame::parsing::traits::Input;
    use std::io::Write;

    #[test]
    fn a_write_that_fills_the_empty_ring_is_rolled_back() {
        let mut buffer = Buffer::with_capacity(16);
        // Move the ring's start away from 0, then empty it.
        (&mut buffer).write_all(b"0123456").expect("fits");
        buffer.consume(7);
        let checkpoint = buffer.checkpoint();
        let written = (&mut buffer).write(&[b'x'; 40]).expect("write");
        assert_eq!(written, 16, "the write fills the whole ring");
        buffer.rollback(checkpoint);
        assert_eq!(
            buffer.available_data(),
            0,
            "nothing of the partial write is left"
        );
        assert_eq!(buffer.available_space(), 16);
    }

    #[test]
    fn growing_keeps_wrapped_data_in_order() {
        let mut buffer = Buffer::with_capacity(8);
        (&mut buffer).write_all(b"abcdef").expect("fits");
        buffer.consume(4);
        (&mut buffer).write_all(b"ghijkl").expect("wraps");
        assert!(buffer.grow(32));
        (&mut buffer).write_all(b"mn").expect("fits");
        let out: Vec<u8> = buffer.parsing_context().iter_elements().collect();
        assert_eq!(out, b"efghijklmn");
    }

    #[test]
    fn growing_a_full_wrapped_ring_keeps_every_byte() {
        for start in 0..8 {
            for growth in [1, 3, 8, 24] {
                let mut buffer = Buffer::with_capacity(8);
                (&mut buffer)
                    .write_all(&b"--------"[..start])
                    .expect("fits");
                buffer.consume(start);
                (&mut buffer).write_all(b"ABCDEFGH").expect("fills");
                assert!(buffer.grow(8 + growth));
                (&mut buffer)
                    .write_all(&b"0123456789abcdefghijklmn"[..growth])
                    .expect("fits");
                let out: Vec<u8> = buffer.parsing_context().iter_elements().collect();
                let mut expected = b"ABCDEFGH".to_vec();
                expected.extend_from_slice(&b"0123456789abcdefghijklmn"[..growth]);
                assert_eq!(out, expected, "start {start}, growth {growth}");
                assert_eq!(buffer.available_space(), 0);
            }
        }
    }

    #[test]
    fn a_forward_rollback_restores_the_later_state() {
        let mut buffer = Buffer::with_capacity(16);
        let start = buffer.checkpoint();
        (&mut buffer).write_all(b"....payload").expect("fits");
        let mut end = buffer.checkpoint();
        end.backwards = false;
        buffer.rollback(start);
        (&mut buffer).write_all(b"LEN:").expect("fits");
        buffer.rollback(end);
        assert_eq!(buffer.available_data(), 11);
    }
}
