//! One style for every settings type: `Default` plus a `#[must_use]` setter per field, named
//! after the field, so a new field never breaks a caller (the types are `#[non_exhaustive]`).

/// Writes `#[must_use]` setters for the fields of a settings type: `Type { field: T, .. }`
/// setters take a `T`; fields listed after `optional` are `Option<T>` and their setters take
/// `T`, `Some(T)` or `None` (back to the default).
macro_rules! setters {
    ($ty:ident { $($field:ident : $t:ty),* $(,)? } $(optional { $($ofield:ident : $ot:ty),* $(,)? })?) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $field(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
            $($(
                #[doc = concat!("Sets [`", stringify!($ofield), "`](Self::", stringify!($ofield), "); `None` for the default.")]
                #[must_use]
                pub fn $ofield(mut self, value: impl Into<Option<$ot>>) -> Self {
                    self.$ofield = value.into();
                    self
                }
            )*)?
        }
    };
}

pub(crate) use setters;
