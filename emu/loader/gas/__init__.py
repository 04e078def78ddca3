"""The GNU as dialect around keystone: each module holds one job of reading a GNU as source
(preprocessing, macro arguments, local labels, operand meaning, AT&T syntax, sections, object
output) so that a statement means here what it means to GNU as."""
